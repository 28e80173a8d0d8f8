//! The harness's one error type. `Context` says what was being done when its source failed,
//! so a caller printing the source chain joined with ": " gets "generating expert 3: ...".

use moe_core::MoeError;

/// Why a bench run failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Options the harness cannot honour: an unknown preset or weight format, flags a backend
    /// does not take, a backend the factory would not pin.
    #[error("{0}")]
    Invalid(String),
    /// Building, loading or running the layer, or reading a tensor.
    #[error(transparent)]
    Moe(#[from] MoeError),
    /// Reading or writing a file of the harness (the cache, peer timings, the page).
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A cache metadata file or a peer timing line that is not the expected JSON.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// Serializing the cache's safetensors files.
    #[error("{0}")]
    Safetensors(String),
    /// A weight generation worker panicked.
    #[error("a weight generation thread panicked")]
    WorkerPanicked,
    /// The options selected no row to time.
    #[error("no rows were selected")]
    NoRows,
    /// What was being done when `source` failed.
    #[error("{what}")]
    Context {
        what: String,
        #[source]
        source: Box<BenchError>,
    },
}

/// The crate's result type.
pub type Result<T, E = BenchError> = std::result::Result<T, E>;

/// `context` and `with_context` on any result whose error converts to [`BenchError`].
pub(crate) trait Context<T> {
    fn with_context<F: FnOnce() -> String>(self, what: F) -> Result<T>;

    fn context(self, what: &str) -> Result<T>
    where
        Self: Sized,
    {
        self.with_context(|| what.to_string())
    }
}

impl<T, E: Into<BenchError>> Context<T> for std::result::Result<T, E> {
    fn with_context<F: FnOnce() -> String>(self, what: F) -> Result<T> {
        self.map_err(|e| BenchError::Context {
            what: what(),
            source: Box::new(e.into()),
        })
    }
}

/// `e` and its sources joined with ": ", as `{:#}` of an `anyhow::Error` prints them.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_chains_like_anyhow() {
        let r: std::result::Result<(), std::io::Error> = Err(std::io::Error::other("disk full"));
        let e = r.with_context(|| "writing `x`".into()).unwrap_err();
        assert_eq!(e.to_string(), "writing `x`");
        assert_eq!(chain(&e), "writing `x`: disk full");
        let outer = Err::<(), _>(e).with_context(|| "caching".into()).unwrap_err();
        assert_eq!(chain(&outer), "caching: writing `x`: disk full");
    }
}
