"""Local retrieval over a folder of documents: loading, chunking, an incremental Chroma index and
hybrid (dense + BM25) search."""
