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
    Key(#[from] crate::keys::KeyError),
    #[error("{0}")]
    Config(String),
}
