//! TLS for the daemon's database sessions, with libpq's `sslmode` meanings.
//!
//! tokio-postgres knows `sslmode=disable|prefer|require` and leaves certificate checks to the
//! TLS connector it is given; it refuses `verify-ca`, `verify-full` and `sslrootcert`. Operators
//! copy connection strings from Supabase and libpq documentation, so the database URL accepts
//! all five modes and `sslrootcert` here, and this module builds the rustls connector that
//! does what each mode promises:
//!
//! | sslmode | TLS | server certificate |
//! |---|---|---|
//! | `disable` | never | – |
//! | `prefer` (default) | if the server offers it | not checked |
//! | `require` | always | not checked (checked as `verify-ca` when `sslrootcert` is given, as libpq does) |
//! | `verify-ca` | always | chain to a trusted root |
//! | `verify-full` | always | chain to a trusted root, and the host name |
//!
//! Trusted roots: the PEM file named by `sslrootcert` (Supabase's is `prod-ca-2021.crt` from the
//! project's database settings), or the public web roots for `sslrootcert=system` or when none
//! is given. The signatures of the handshake are always verified, whatever the mode.
//!
//! Every TLS session also carries SCRAM channel binding data, so a password login over TLS
//! cannot be relayed by a man in the middle, even in the modes that do not check certificates
//! (`channel_binding=require` in the URL refuses a session without it).

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

/// libpq's `sslmode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            _ => return None,
        })
    }

    /// The mode as tokio-postgres understands it (whether TLS is attempted or required).
    pub fn for_tokio_postgres(self) -> tokio_postgres::config::SslMode {
        match self {
            Self::Disable => tokio_postgres::config::SslMode::Disable,
            Self::Prefer => tokio_postgres::config::SslMode::Prefer,
            Self::Require | Self::VerifyCa | Self::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        }
    }
}

/// Where the trusted roots come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCerts {
    /// The public web roots (`webpki-roots`): `sslrootcert=system`, or none given.
    System,
    /// A PEM file of CA certificates.
    File(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("sslrootcert {path}: {message}; give the PEM file of the CA that signed the database's certificate (for Supabase: prod-ca-2021.crt from the project's database settings)")]
    RootCert { path: PathBuf, message: String },
    #[error("cannot set up TLS: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The connector handed to tokio-postgres and deadpool for every session.
#[derive(Clone)]
pub struct RustlsConnect {
    config: Arc<rustls::ClientConfig>,
}

impl RustlsConnect {
    /// The connector for `mode` with roots from `roots` (used by `require` only when the roots
    /// come from a file, as libpq does).
    pub fn new(mode: SslMode, roots: &RootCerts) -> Result<Self, TlsSetupError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let check_chain = match mode {
            SslMode::VerifyCa | SslMode::VerifyFull => true,
            SslMode::Require => matches!(roots, RootCerts::File(_)),
            SslMode::Disable | SslMode::Prefer => false,
        };
        let chain = if check_chain {
            let store = Arc::new(root_store(roots)?);
            Some(
                WebPkiServerVerifier::builder_with_provider(store, provider.clone())
                    .build()
                    .map_err(|e| TlsSetupError::Rustls(rustls::Error::General(e.to_string())))?,
            )
        } else {
            None
        };
        let verifier: Arc<dyn ServerCertVerifier> = match chain {
            Some(webpki) if mode == SslMode::VerifyFull => webpki,
            chain => Arc::new(Lenient {
                provider: provider.clone(),
                chain,
            }),
        };
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(Self {
            config: Arc::new(config),
        })
    }
}

fn root_store(roots: &RootCerts) -> Result<RootCertStore, TlsSetupError> {
    let mut store = RootCertStore::empty();
    match roots {
        RootCerts::System => store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        RootCerts::File(path) => {
            let certs = read_pem_certs(path).map_err(|message| TlsSetupError::RootCert {
                path: path.clone(),
                message,
            })?;
            for cert in certs {
                store.add(cert).map_err(|e| TlsSetupError::RootCert {
                    path: path.clone(),
                    message: format!("not a usable CA certificate: {e}"),
                })?;
            }
        }
    }
    Ok(store)
}

fn read_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot be read: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("is not PEM: {e}"))?;
    if certs.is_empty() {
        return Err("holds no certificate".to_owned());
    }
    Ok(certs)
}

/// What `verify-full` does not cover: `verify-ca` (`chain` set: the certificate must chain to a
/// trusted root, but may name another host, e.g. a pooler reached by IP address), and `prefer`
/// and `require` without `sslrootcert` (`chain` unset: encryption without authenticating the
/// server, as libpq does). Either way the handshake's signatures are checked against the
/// presented key.
#[derive(Debug)]
struct Lenient {
    provider: Arc<CryptoProvider>,
    chain: Option<Arc<WebPkiServerVerifier>>,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl<S> MakeTlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnectTo;
    type Error = rustls::pki_types::InvalidDnsNameError;

    fn make_tls_connect(&mut self, host: &str) -> Result<RustlsConnectTo, Self::Error> {
        Ok(RustlsConnectTo {
            config: self.config.clone(),
            server_name: ServerName::try_from(host.to_owned())?,
        })
    }
}

/// [`RustlsConnect`] for one host.
pub struct RustlsConnectTo {
    config: Arc<rustls::ClientConfig>,
    server_name: ServerName<'static>,
}

impl<S> TlsConnect<S> for RustlsConnectTo
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let connector = tokio_rustls::TlsConnector::from(self.config);
            let stream = connector.connect(self.server_name, stream).await?;
            Ok(RustlsStream(stream))
        })
    }
}

/// A TLS session to the database.
pub struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
    /// `tls-server-end-point` of the server's certificate, so SCRAM logins use
    /// `SCRAM-SHA-256-PLUS` (see [`super::channel_binding`]); none when the certificate's
    /// signature algorithm names no hash.
    fn channel_binding(&self) -> ChannelBinding {
        let (_, session) = self.0.get_ref();
        session
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|certificate| super::channel_binding::tls_server_end_point(certificate))
            .map_or_else(ChannelBinding::none, ChannelBinding::tls_server_end_point)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
