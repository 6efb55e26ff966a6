"""Shared fixtures: a real tokenizer trained in the session on real text, and a small cache directory."""
import os

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def news_sentences():
    """A few hundred real sentences of the offline news corpus."""
    from datamodules.corpus import CorpusConfig, iter_documents, segment

    documents = list(iter_documents(CorpusConfig(max_documents=60)))
    return [s for doc in documents for s in segment(doc, 100_000)]


@pytest.fixture(scope="session")
def tiny_tokenizer(news_sentences):
    from datamodules.tokenization import TokenizerConfig, train_tokenizer

    return train_tokenizer(TokenizerConfig(vocab_size=600), iter(news_sentences))
