"""Known images: image hashes, hash banks (database), the in-memory match index."""
