"""Data: the embedded text corpus (and, later, task datasets and loaders)."""

from uncover.data.corpus import CorpusError, corpus_info, corpus_texts, split_documents, token_blocks

__all__ = ["CorpusError", "corpus_info", "corpus_texts", "split_documents", "token_blocks"]
