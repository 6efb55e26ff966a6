"""Linear probes of the frozen encoder: what each downstream task can read off its features (issue 24, item 1).

Fine-tuning moves every weight, for several epochs, from a seeded head and batch order: one encoder's three
`topic` runs at small scored 91.5, 89.4 and 68.7. A probe moves none of the encoder's weights: features of
the frozen pretrained encoder (eval mode, no dropout) for the same training and dev examples fine-tuning
uses (same caps, same maximum length), standardised, then scikit-learn's LogisticRegression (lbfgs, L2;
ridge regression for a regression task) with its inverse regularisation C chosen on a stratified fifth of
the training set, refitted on all of it and scored on the same dev set with the task's metric (x100).
Deterministic for a given encoder and data, and seconds per task on a CPU.

Three features are measured (Devlin et al. 2019, §5.3, found the last four layers' states the best
frozen features for BERT; the first token is what the fine-tuning head reads):

- `first_token`: the last layer's state of [CLS];
- `mean_last_layer`: the last layer's states averaged over the real tokens;
- `mean_last_4_layers`: the same average over each of the last four layers (all of them, if fewer), averaged.

`<task>_probe` and `probe_avg` use `PROBE_FEATURE`; every feature's score is recorded as
`<task>_probe_<feature>` and `probe_avg_<feature>`, so that the calibration measures each one's noise.

A tagging task (Brown POS, `kind="tokens"`) is probed a token at a time: the feature of a word is the last
layer's state at its first sub-token (the one the fine-tuned tagger reads), a logistic regression predicts its
tag, and the score is `pos_probe` (every dev word) with `pos_ambiguous_probe` (the ambiguous ones). That probe
has a fixed C (`TAGGING_C`) and a looser tolerance (`TAGGING_TOLERANCE`), since its size made the sentence
probes' recipe cost minutes: 36K training words with ~120 tags took 0.1 s per lbfgs iteration and 160-560
iterations per fit, 300 s for the grid on a busy 2-core machine (a random 4 x 128 encoder, 2026-12). With
280 training words per feature, C matters little there (C = 1 and 10: 62.4 and 62.7%, C = 0.01: 58.5%), and the
looser tolerance stops lbfgs after ~60 iterations (61.4% at C = 1): one fit, about 6 s.
The word-order tasks are averaged apart (`order_probe_avg`; `probe_avg` keeps averaging the others, see
experiments.evaluations.finetuning.task_averages).
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

from datamodules.batching import collate_classification, collate_tokens

FEATURES = ("first_token", "mean_last_layer", "mean_last_4_layers")
# The feature the table reports: the steadiest across pretraining seeds where it was measured. On three seeds of
# DOC-SENTENCES at small (2026-12-03) probe_avg's SD between seeds was 0.29 points with the last layer's mean,
# 0.66 with the last four layers' and 0.76 with the first token (paired SDs 0.41 / 0.93 / 1.07; fine-tuning's
# downstream average: 5.07); at cpu the first token's probe_avg was 7-11 points below the two means on every NSP
# row (one seed each). `make calibrate` prints the three features' paired SDs again at its preset.
PROBE_FEATURE = "mean_last_layer"
LAST_LAYERS = 4
C_GRID = tuple(10.0 ** k for k in range(-4, 3))  # 1e-4 ... 100: from almost constant to almost unregularised
SELECTION_SHARE, SELECTION_SEED = 0.2, 0
MAX_ITERATIONS = 2000
TAGGING_C, TAGGING_TOLERANCE = 1.0, 1e-3
BATCH_SIZE = 64


@torch.no_grad()
def encoder_features(encoder, items, autocast_dtype: torch.dtype | None = None) -> dict[str, np.ndarray]:
    """Each feature of FEATURES for every (encoded example, label) in `items`, as float32 arrays (N, hidden)."""
    device = next(encoder.parameters()).device
    encoder.eval()
    out: dict[str, list[np.ndarray]] = {name: [] for name in FEATURES}
    for start in range(0, len(items), BATCH_SIZE):
        batch = collate_classification(items[start:start + BATCH_SIZE])
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            states = layer_states(encoder, ids, mask, batch["token_type_ids"].to(device))
        weights = (mask.float() / mask.sum(1, keepdim=True))[:, :, None]
        means = [(state.float() * weights).sum(1) for state in states]
        out["first_token"].append(states[-1][:, 0].float().cpu().numpy())
        out["mean_last_layer"].append(means[-1].cpu().numpy())
        out["mean_last_4_layers"].append(torch.stack(means[-LAST_LAYERS:]).mean(0).cpu().numpy())
    return {name: np.concatenate(parts) for name, parts in out.items()}


def layer_states(encoder, input_ids, attention_mask, token_type_ids) -> list[torch.Tensor]:
    """Every layer's output (B, L, H), the last one as `Encoder.forward` returns it (after a pre-LN stack's
    final norm)."""
    x = encoder.embeddings(input_ids, token_type_ids)
    bias, relative = encoder.attention_inputs(attention_mask, input_ids.shape[1], input_ids.device)
    states = []
    for block in encoder.blocks:
        x = block(x, bias, relative)
        states.append(x)
    if encoder.final_norm is not None:
        states[-1] = encoder.final_norm(states[-1])
    return states


def task_score(metric: str, labels: np.ndarray, predicted: np.ndarray) -> float:
    """The task's official metric (x100), as fine-tuning reports it (lightning_modules.finetune)."""
    from sklearn.metrics import f1_score, matthews_corrcoef

    if metric == "accuracy":
        return float(100 * np.mean(labels == predicted))
    if metric == "f1":
        return float(100 * f1_score(labels, predicted, zero_division=0))
    if metric == "matthews":
        return float(100 * matthews_corrcoef(labels, predicted))
    from scipy.stats import pearsonr, spearmanr

    return float(100 * (pearsonr(labels, predicted)[0] + spearmanr(labels, predicted)[0]) / 2)


def _model(regression: bool, c: float):
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    final = Ridge(alpha=1.0 / c) if regression else LogisticRegression(C=c, max_iter=MAX_ITERATIONS)
    return make_pipeline(StandardScaler(), final)


def fit_probe(train_x: np.ndarray, train_y: np.ndarray, dev_x: np.ndarray, dev_y: np.ndarray, metric: str,
              regression: bool = False) -> tuple[float, float]:
    """(dev score x100, the C chosen): C is the grid's best on a held-out fifth of the training set (the
    smaller C on a tie), then the probe is refitted on the whole training set."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import train_test_split
    from threadpoolctl import threadpool_limits

    labels = train_y if not regression and np.bincount(train_y.astype(int)).min() >= 2 else None
    fit_x, select_x, fit_y, select_y = train_test_split(train_x, train_y, test_size=SELECTION_SHARE,
                                                        random_state=SELECTION_SEED, stratify=labels)
    # one BLAS thread: these matrices are small, and on a busy machine (a second sweep, another worker) two
    # OpenBLAS threads spin for a core: the 7 fits of one probe took 13 s with two and 0.18 s with one
    with warnings.catch_warnings(), threadpool_limits(limits=1, user_api="blas"):
        # a few lbfgs runs at the largest C stop at MAX_ITERATIONS; their fit is deterministic all the same
        warnings.simplefilter("ignore", ConvergenceWarning)
        selection = [task_score(metric, select_y, _model(regression, c).fit(fit_x, fit_y).predict(select_x))
                     for c in C_GRID]
        best = C_GRID[int(np.argmax(selection))]
        predicted = _model(regression, best).fit(train_x, train_y).predict(dev_x)
    return task_score(metric, dev_y, predicted), best


@torch.no_grad()
def token_features(encoder, items, autocast_dtype: torch.dtype | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A tagging task's (features, labels, ambiguous) per labelled token: the last layer's state at each word's
    first sub-token, its tag, and whether its word is ambiguous."""
    device = next(encoder.parameters()).device
    encoder.eval()
    features, labels, ambiguous = [], [], []
    for start in range(0, len(items), BATCH_SIZE):
        batch = collate_tokens(items[start:start + BATCH_SIZE])
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            last = layer_states(encoder, ids, mask, batch["token_type_ids"].to(device))[-1]
        labelled = batch["labels"] != -100
        features.append(last[labelled.to(device)].float().cpu().numpy())
        labels.append(batch["labels"][labelled].numpy())
        ambiguous.append(batch["ambiguous"][labelled].numpy())
    return np.concatenate(features), np.concatenate(labels), np.concatenate(ambiguous)


def tagging_probe(encoder, data, autocast_dtype: torch.dtype | None = None) -> tuple[dict[str, float], dict]:
    """A tagging task's probe: ({"": accuracy on every dev token, "_ambiguous": on the ambiguous ones}, details)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    train_x, train_y, _ = token_features(encoder, data.train_items, autocast_dtype)
    dev_x, dev_y, ambiguous = token_features(encoder, data.val_items, autocast_dtype)
    with warnings.catch_warnings(), threadpool_limits(limits=1, user_api="blas"):
        warnings.simplefilter("ignore", ConvergenceWarning)
        probe = LogisticRegression(C=TAGGING_C, tol=TAGGING_TOLERANCE, max_iter=MAX_ITERATIONS)
        predicted = make_pipeline(StandardScaler(), probe).fit(train_x, train_y).predict(dev_x)
    right = predicted == dev_y
    scores = {"": float(100 * right.mean()), "_ambiguous": float(100 * right[ambiguous].mean()) if ambiguous.any() else 0.0}
    return scores, {"train": len(data.train_items), "dev": len(data.val_items), "train_tokens": len(train_y),
                    "dev_tokens": len(dev_y), "dev_ambiguous_tokens": int(ambiguous.sum()), "C": TAGGING_C}


def probe_metrics(encoder, tasks: dict, every_feature: bool = True,
                  autocast_dtype: torch.dtype | None = None) -> tuple[dict[str, float], dict]:
    """`<task>_probe` and `probe_avg` (PROBE_FEATURE) and each task's majority baseline; with `every_feature`
    also `<task>_probe_<feature>` and `probe_avg_<feature>` for every feature. `tasks` maps a task's name to
    its FineTuneDataModule (the encoded examples fine-tuning uses). Also the C each probe chose."""
    from experiments.evaluations.finetuning import task_averages

    features = FEATURES if every_feature else (PROBE_FEATURE,)
    scores: dict[str, dict[str, float]] = {feature: {} for feature in features}
    metrics, details = {}, {}
    for name, data in tasks.items():
        if data.task.spec.kind == "tokens":  # one feature: the token's own state
            tagged, details[name] = tagging_probe(encoder, data, autocast_dtype)
            metrics |= {f"{name}{key}_probe": score for key, score in tagged.items()}
            metrics[f"{name}_majority"] = data.task.majority_score()
            continue
        train = encoder_features(encoder, data.train_items, autocast_dtype)
        dev = encoder_features(encoder, data.val_items, autocast_dtype)
        train_y = np.array([y for _, y in data.train_items])
        dev_y = np.array([y for _, y in data.val_items])
        spec = data.task.spec
        details[name] = {"train": len(train_y), "dev": len(dev_y)}
        for feature in features:
            scores[feature][name], details[name][f"C_{feature}"] = fit_probe(
                train[feature], train_y, dev[feature], dev_y, spec.metric, spec.num_labels == 1)
        metrics[f"{name}_majority"] = data.task.majority_score()
    specs = {name: data.task.spec for name, data in tasks.items()}
    metrics |= {f"{name}_probe": score for name, score in scores[PROBE_FEATURE].items()}
    metrics |= task_averages(metrics, specs, "_probe")
    if every_feature:
        for feature, by_task in scores.items():
            named = {f"{name}_probe": score for name, score in by_task.items()}
            averaged = task_averages(named, {n: s for n, s in specs.items() if s.kind != "tokens"}, "_probe")
            metrics |= {f"{key}_{feature}": score for key, score in (named | averaged).items()
                        if key != "order_probe_avg"}  # a word-order average with one feature would leave pos out
    return metrics, details
