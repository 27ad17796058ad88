//! The bytes of a model file: memory-mapped from disk, or held in memory (small files made by
//! tests, and the fuzzers' inputs).

use memmap2::Mmap;

pub enum Blob {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Blob {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Blob::Mapped(m) => m,
            Blob::Owned(v) => v,
        }
    }
}
