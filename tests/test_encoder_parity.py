"""Numerical parity with HuggingFace transformers on shared weights (fp32, padded random inputs)."""
import pytest
import torch

from ablations.config import EncoderConfig
from ablations.encoder import Encoder
from ablations.export import to_hf
from datamodules.tokenization import PAD_ID

pytest.importorskip("transformers")

TINY = dict(vocab_size=300, hidden_size=64, num_layers=2, num_heads=4, ffn_size=128, max_positions=64,
            dropout=0.0, attention_dropout=0.0)


def padded_inputs(lengths, vocab_size, seed=0):
    generator = torch.Generator().manual_seed(seed)
    longest = max(lengths)
    ids = torch.randint(5, vocab_size, (len(lengths), longest), generator=generator)
    mask = torch.arange(longest)[None, :] < torch.tensor(lengths)[:, None]
    ids = ids.masked_fill(~mask, PAD_ID)
    types = (torch.arange(longest)[None, :] >= torch.tensor(lengths)[:, None] // 2).long() * mask
    return ids, mask, types


def compare(ours: Encoder, hf_model, lengths, with_types=True):
    ids, mask, types = padded_inputs(lengths, ours.config.vocab_size)
    types = types if with_types and ours.config.type_vocab_size > 1 else None
    with torch.no_grad():
        mine = ours(ids, mask, types)
        kwargs = {"token_type_ids": types} if types is not None else {}
        theirs = hf_model(input_ids=ids, attention_mask=mask.long(), **kwargs).last_hidden_state
    real = mask[..., None].expand_as(mine)
    return (mine - theirs).abs()[real].max().item()


@pytest.mark.parametrize("lengths", [[7, 13, 20], [31, 2], [64]])
def test_absolute_matches_bert(lengths):
    ours = Encoder(EncoderConfig(**TINY, layer_norm_eps=1e-12)).eval()
    assert compare(ours, to_hf(ours, "bert"), lengths) < 1e-5


@pytest.mark.parametrize("lengths", [[7, 13, 20], [62]])
def test_absolute_matches_roberta(lengths):
    ours = Encoder(EncoderConfig(**TINY, type_vocab_size=1)).eval()
    assert compare(ours, to_hf(ours, "roberta"), lengths) < 1e-5


DEBERTA_OPTIONS = [
    dict(),
    dict(share_position_projections=True),
    dict(position_buckets=16, relative_span=48),
    dict(c2p=False),
    dict(p2c=False),
    dict(normalize_relative_embeddings=False, relative_span=8),
    dict(type_vocab_size=0),
]


@pytest.mark.parametrize("options", DEBERTA_OPTIONS, ids=lambda o: ",".join(o) or "default")
@pytest.mark.parametrize("lengths", [[9, 30, 17], [64, 5]])
def test_disentangled_matches_deberta_v2(options, lengths):
    config = EncoderConfig(**(TINY | dict(attention="disentangled", p2c_index="code", layer_norm_eps=1e-7,
                                           relative_span=32) | options))
    ours = Encoder(config).eval()
    assert compare(ours, to_hf(ours, "deberta-v2"), lengths) < 1e-5


def test_paper_p2c_index_differs_from_hf_code_index():
    """The paper's delta(j,i) and the code's delta(i,j) are both real options and give different outputs."""
    config = EncoderConfig(**(TINY | dict(attention="disentangled", p2c_index="code", relative_span=8)))
    code = Encoder(config).eval()
    paper = Encoder(config.replace(p2c_index="paper")).eval()
    paper.load_state_dict(code.state_dict())
    hf = to_hf(code, "deberta-v2")
    assert compare(code, hf, [20, 11]) < 1e-5
    assert compare(paper, hf, [20, 11]) > 1e-4  # 10x the parity tolerance


def test_exported_checkpoint_reloads_and_matches(tmp_path, tiny_tokenizer):
    import transformers
    from ablations.export import export_pretrained

    ours = Encoder(EncoderConfig(**(TINY | dict(attention="disentangled", p2c_index="code",
                                                vocab_size=tiny_tokenizer.get_vocab_size())))).eval()
    export_pretrained(ours, tiny_tokenizer, tmp_path / "export")
    reloaded = transformers.AutoModel.from_pretrained(tmp_path / "export").eval()
    assert isinstance(reloaded, transformers.DebertaV2Model)
    assert compare(ours, reloaded, [12, 30]) < 1e-5
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "export")
    encoded = tokenizer("Hello world.", "Second segment.")
    assert encoded["input_ids"][0] == 0 and encoded["input_ids"][-1] == 2


def test_export_refuses_what_hf_cannot_represent():
    from datamodules.errors import UsageError

    with pytest.raises(UsageError, match="p2c"):
        to_hf(Encoder(EncoderConfig(**(TINY | dict(attention="disentangled")))), "deberta-v2")
    with pytest.raises(UsageError, match="projection"):
        to_hf(Encoder(EncoderConfig(**(TINY | dict(embedding_size=32)))), "bert")
    with pytest.raises(UsageError, match="relative_bias=false"):
        to_hf(Encoder(EncoderConfig(**(TINY | dict(relative_bias=True)))), "bert")


# ---------------------------------------------------------------------------------------- CUDA and bf16
# The same parity on a GPU (what `make gpu-check` runs there; skipped without one), and under bf16 autocast,
# where neither model matches fp32 exactly: ours must be about as close to the fp32 output as HF's own bf16 run.

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (make gpu-check runs it there)")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]
ATTENTIONS = {"bert": dict(layer_norm_eps=1e-12),
              "deberta-v2": dict(attention="disentangled", p2c_index="code", layer_norm_eps=1e-7, relative_span=32)}


def outputs(ours: Encoder, hf_model, lengths, device: str, bf16: bool):
    """(ours, HF's) last hidden states at the real positions, in fp32, computed on `device`."""
    ids, mask, types = (t.to(device) for t in padded_inputs(lengths, ours.config.vocab_size))
    types = types if ours.config.type_vocab_size > 1 else None
    ours, hf_model = ours.to(device), hf_model.to(device)
    context = torch.autocast(device, dtype=torch.bfloat16) if bf16 else torch.autocast(device, enabled=False)
    with torch.no_grad(), context:
        mine = ours(ids, mask, types).float()
        kwargs = {"token_type_ids": types} if types is not None else {}
        theirs = hf_model(input_ids=ids, attention_mask=mask.long(), **kwargs).last_hidden_state.float()
    return mine[mask], theirs[mask]


@CUDA
@pytest.mark.parametrize("kind", list(ATTENTIONS))
@pytest.mark.parametrize("lengths", [[7, 13, 20], [64, 5]])
def test_parity_on_cuda_in_fp32(kind, lengths):
    ours = Encoder(EncoderConfig(**(TINY | ATTENTIONS[kind]))).eval()
    mine, theirs = outputs(ours, to_hf(ours, kind), lengths, "cuda", bf16=False)
    # GPU kernels sum in another order than the CPU's (and fused attention kernels differ between the two models)
    assert (mine - theirs).abs().max().item() < 1e-4


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", list(ATTENTIONS))
def test_bf16_autocast_is_as_close_to_fp32_as_hfs(device, kind):
    ours = Encoder(EncoderConfig(**(TINY | ATTENTIONS[kind]))).eval()
    hf_model = to_hf(ours, kind)
    reference, _ = outputs(ours, hf_model, [7, 13, 20], device, bf16=False)
    mine, theirs = outputs(ours, hf_model, [7, 13, 20], device, bf16=True)
    ours_error, hf_error = (mine - reference).abs(), (theirs - reference).abs()
    assert torch.isfinite(mine).all()
    # bf16 keeps 8 bits of mantissa: errors of a few 1e-2 on unit-scale hidden states are its rounding
    assert ours_error.max().item() < 0.25 and ours_error.mean().item() < 0.05
    assert ours_error.mean().item() <= 2 * hf_error.mean().item() + 5e-3
