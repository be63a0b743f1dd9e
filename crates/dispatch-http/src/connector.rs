//! The connector stack under the hyper client: a resolver that lets only guarded addresses
//! through, a TCP connector that connects to exactly those, and TLS (webpki roots plus an optional
//! extra CA bundle) with ALPN for HTTP/2.
//!
//! ```text
//! HttpsConnector (hyper-rustls: TLS, ALPN h2/http1.1, https-only unless allow_http)
//!   └─ GuardedConnector (refuses literal IP hosts the guard refuses)
//!        └─ HttpConnector<GuardedResolver> (connect timeout; connects to the resolver's addresses)
//!             └─ GuardedResolver (resolves, drops refused addresses, fails if none remain)
//! ```
//!
//! `HttpConnector` never resolves a literal IP host (it parses it and connects), which is why
//! [`GuardedConnector`] checks those itself before delegating.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::Uri;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::net::TcpStream;
use tower_service::Service;

use crate::ssrf::{AddressGuard, ResolveError};
use crate::{Error, HttpConfig, Result};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The resolver `HttpConnector` asks for a name's addresses: [`AddressGuard::resolve`], so only
/// addresses the guard allows are ever handed to the TCP connector.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    guard: Arc<AddressGuard>,
}

impl GuardedResolver {
    /// A resolver applying `guard`.
    #[must_use]
    pub fn new(guard: Arc<AddressGuard>) -> Self {
        Self { guard }
    }
}

impl Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = ResolveError;
    type Future = BoxFuture<Result<Self::Response, ResolveError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let guard = Arc::clone(&self.guard);
        Box::pin(async move {
            // HttpConnector puts the URL's port on the addresses afterwards.
            let addrs = guard.resolve(name.as_str(), 0).await?;
            Ok(addrs.into_iter())
        })
    }
}

/// A TCP connector (`Service<Uri>`) that connects only to addresses the SSRF guard allows:
/// literal IP hosts are checked here, names through [`GuardedResolver`].
#[derive(Debug, Clone)]
pub struct GuardedConnector {
    inner: HttpConnector<GuardedResolver>,
    guard: Arc<AddressGuard>,
}

impl GuardedConnector {
    /// A connector applying `guard`, giving up on a TCP connect after the configured connect
    /// timeout.
    #[must_use]
    pub fn new(guard: Arc<AddressGuard>, config: &HttpConfig) -> Self {
        let mut inner = HttpConnector::new_with_resolver(GuardedResolver::new(Arc::clone(&guard)));
        // The scheme is the TLS layer's business; this one only makes TCP connections.
        inner.enforce_http(false);
        inner.set_connect_timeout(Some(config.connect_timeout()));
        // Webhooks are one small request each: don't let Nagle hold the body back.
        inner.set_nodelay(true);
        Self { inner, guard }
    }
}

impl Service<Uri> for GuardedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let host = dst.host().unwrap_or_default();
        let host = host
            .strip_prefix('[')
            .and_then(|inner| inner.strip_suffix(']'))
            .unwrap_or(host);
        // The same parse HttpConnector uses to skip resolution: what it would connect to
        // directly is checked here.
        if let Ok(ip) = host.parse::<IpAddr>()
            && let Err(blocked) = self.guard.check_literal(host, ip)
        {
            let error: BoxError = Box::new(ResolveError::Blocked(blocked));
            return Box::pin(async move { Err(error) });
        }
        let connecting = self.inner.call(dst);
        Box::pin(async move { connecting.await.map_err(Into::into) })
    }
}

/// The TLS client configuration: the webpki roots, plus the certificates of `extra_ca_file`.
pub fn tls_config(config: &HttpConfig) -> Result<rustls::ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = &config.extra_ca_file {
        let ca_error = |message: String| Error::Config {
            key: "extra_ca_file".to_owned(),
            message,
        };
        let certificates = CertificateDer::pem_file_iter(path)
            .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
            .map_err(|error| ca_error(format!("cannot read {}: {error}", path.display())))?;
        if certificates.is_empty() {
            return Err(ca_error(format!(
                "{} holds no PEM certificate",
                path.display()
            )));
        }
        for certificate in certificates {
            roots.add(certificate).map_err(|error| {
                ca_error(format!("{} holds an unusable CA: {error}", path.display()))
            })?;
        }
    }
    // The provider is named rather than taken from the process default, so a second rustls
    // provider elsewhere in the binary cannot make this ambiguous.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(Error::Tls)?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The whole connector stack for a configuration.
pub fn https_connector(
    config: &HttpConfig,
    guard: Arc<AddressGuard>,
) -> Result<HttpsConnector<GuardedConnector>> {
    let builder = HttpsConnectorBuilder::new().with_tls_config(tls_config(config)?);
    let builder = if config.allow_http {
        builder.https_or_http()
    } else {
        builder.https_only()
    };
    Ok(builder
        .enable_http1()
        .enable_http2()
        .wrap_connector(GuardedConnector::new(guard, config)))
}
