//! A stand-in for tokio-test: see this crate's Cargo.toml.
//!
//! pingora-core's only use of `tokio_test` outside its own `#[cfg(test)]`
//! modules is to implement its connection traits for [`io::Mock`]
//! (`protocols::ext_io_impl`), so the type is all there is here. It has no
//! values: nothing can make one.

pub mod io {
    /// Stands for `tokio_test::io::Mock`; uninhabited.
    #[derive(Debug)]
    pub enum Mock {}
}
