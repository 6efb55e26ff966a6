"""Data: corpora -> documents of sentences -> tokens -> RoBERTa's input formats -> masked batches."""
