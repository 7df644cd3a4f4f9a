//! `ioxide`: the host runtime — one io_uring ring and one task executor per reactor thread.
