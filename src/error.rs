//! Errors that stop a process at startup. Request and reconcile errors have their own enums
//! next to the code that raises them (`admission::review::ReviewError`, `controller::Error`).

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Tls(#[from] crate::admission::tls::TlsError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot reach the Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Key(#[from] stepup_core::keys::KeyError),
    #[error("{0}")]
    Config(String),
}

/// An error with its causes, as one line (`a: b: c`); a cause whose text the line already holds
/// is not repeated.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = e.source();
    }
    out
}
