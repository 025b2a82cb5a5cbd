//! Hand-built ClientHello probes. rustls cannot offer SSLv3, TLS 1.0/1.1 or weak suites, so to
//! learn what a server accepts we send the first handshake message ourselves, one protocol
//! version and a chosen suite list per connection, and read the server's first answer: a
//! ServerHello (accepted: which version and suite) or an alert (refused: why).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A protocol version as it appears on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Ssl3,
    Tls10,
    Tls11,
    Tls12,
}

impl Protocol {
    pub const ALL: [Protocol; 4] = [
        Protocol::Ssl3,
        Protocol::Tls10,
        Protocol::Tls11,
        Protocol::Tls12,
    ];

    pub fn wire(self) -> u16 {
        match self {
            Protocol::Ssl3 => 0x0300,
            Protocol::Tls10 => 0x0301,
            Protocol::Tls11 => 0x0302,
            Protocol::Tls12 => 0x0303,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Protocol::Ssl3 => "SSLv3",
            Protocol::Tls10 => "TLS 1.0",
            Protocol::Tls11 => "TLS 1.1",
            Protocol::Tls12 => "TLS 1.2",
        }
    }
}

/// What the server answered to one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeAnswer {
    /// A ServerHello: the version and suite the server picked.
    Accepted { version: u16, suite: u16 },
    /// A TLS alert (description code, e.g. 70 protocol_version, 40 handshake_failure).
    Alert(u8),
    /// The connection closed, or the answer was not TLS: refused either way.
    Closed,
}

impl ProbeAnswer {
    pub fn accepted(&self) -> bool {
        matches!(self, ProbeAnswer::Accepted { .. })
    }

    /// Whether the server speaks `protocol` itself: a server offered TLS 1.2 may answer with
    /// an older version, which says it does not support 1.2.
    pub fn accepts(&self, protocol: Protocol) -> bool {
        matches!(self, ProbeAnswer::Accepted { version, .. } if *version == protocol.wire())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{addr} did not answer within {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
}

/// Every suite a probe may offer when asking "which version does the server accept": modern
/// and legacy, so that the version, not the suite list, decides.
pub const BROAD_SUITES: &[u16] = &[
    0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9, 0xCCA8, // ECDHE with AEAD
    0xC009, 0xC013, 0xC00A, 0xC014, 0xC023, 0xC027, 0xC024, 0xC028, // ECDHE with CBC
    0x009E, 0x009F, 0x0033, 0x0039, // DHE
    0x009C, 0x009D, 0x002F, 0x0035, 0x003C, 0x003D, // RSA key exchange
    0x000A, 0x0005, 0x0004, // 3DES, RC4
];

/// TLS 1.2 (and older) suites a probe asks about one at a time, with IANA names: the modern
/// ones, and the legacy ones a grade must catch (CBC, RSA key exchange, 3DES, RC4, NULL,
/// EXPORT).
pub const KNOWN_SUITES: &[(u16, &str)] = &[
    (0xC02B, "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"),
    (0xC02C, "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"),
    (0xCCA9, "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"),
    (0xC02F, "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"),
    (0xC030, "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"),
    (0xCCA8, "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256"),
    (0x009E, "TLS_DHE_RSA_WITH_AES_128_GCM_SHA256"),
    (0x009F, "TLS_DHE_RSA_WITH_AES_256_GCM_SHA384"),
    (0xC009, "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA"),
    (0xC00A, "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA"),
    (0xC023, "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256"),
    (0xC024, "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA384"),
    (0xC013, "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA"),
    (0xC014, "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA"),
    (0xC027, "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256"),
    (0xC028, "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA384"),
    (0x0033, "TLS_DHE_RSA_WITH_AES_128_CBC_SHA"),
    (0x0039, "TLS_DHE_RSA_WITH_AES_256_CBC_SHA"),
    (0x009C, "TLS_RSA_WITH_AES_128_GCM_SHA256"),
    (0x009D, "TLS_RSA_WITH_AES_256_GCM_SHA384"),
    (0x002F, "TLS_RSA_WITH_AES_128_CBC_SHA"),
    (0x0035, "TLS_RSA_WITH_AES_256_CBC_SHA"),
    (0x003C, "TLS_RSA_WITH_AES_128_CBC_SHA256"),
    (0x003D, "TLS_RSA_WITH_AES_256_CBC_SHA256"),
    (0xC012, "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA"),
    (0x000A, "TLS_RSA_WITH_3DES_EDE_CBC_SHA"),
    (0xC011, "TLS_ECDHE_RSA_WITH_RC4_128_SHA"),
    (0x0005, "TLS_RSA_WITH_RC4_128_SHA"),
    (0x0004, "TLS_RSA_WITH_RC4_128_MD5"),
    (0x0002, "TLS_RSA_WITH_NULL_SHA"),
    (0x0003, "TLS_RSA_EXPORT_WITH_RC4_40_MD5"),
    (0x0008, "TLS_RSA_EXPORT_WITH_DES40_CBC_SHA"),
];

/// The IANA name of a suite code, or its hex code when unknown.
pub fn suite_name(code: u16) -> String {
    KNOWN_SUITES
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, name)| (*name).to_owned())
        .unwrap_or_else(|| format!("0x{code:04X}"))
}

/// Every suite of [`KNOWN_SUITES`] the server accepts at `protocol`, one probe per suite.
pub async fn accepted_suites(
    addr: SocketAddr,
    server_name: Option<&str>,
    protocol: Protocol,
    timeout: Duration,
) -> Result<Vec<u16>, ProbeError> {
    let mut accepted = Vec::new();
    for (code, _) in KNOWN_SUITES {
        let answer = probe(addr, server_name, protocol, &[*code], timeout).await?;
        if answer.accepts(protocol) {
            accepted.push(*code);
        }
    }
    Ok(accepted)
}

/// Sends one ClientHello for `protocol` offering `suites`, and reads the first answer.
pub async fn probe(
    addr: SocketAddr,
    server_name: Option<&str>,
    protocol: Protocol,
    suites: &[u16],
    timeout: Duration,
) -> Result<ProbeAnswer, ProbeError> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|source| ProbeError::Connect { addr, source })?;
        let hello = client_hello(protocol, suites, server_name);
        if stream.write_all(&hello).await.is_err() {
            return Ok(ProbeAnswer::Closed);
        }
        Ok(read_answer(&mut stream).await)
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| ProbeError::Timeout { addr, timeout })?
}

async fn read_answer(stream: &mut TcpStream) -> ProbeAnswer {
    let mut header = [0u8; 5];
    if stream.read_exact(&mut header).await.is_err() {
        return ProbeAnswer::Closed;
    }
    let length = usize::from(u16::from_be_bytes([header[3], header[4]]));
    if length == 0 || length > 18 * 1024 {
        return ProbeAnswer::Closed;
    }
    let mut body = vec![0u8; length];
    if stream.read_exact(&mut body).await.is_err() {
        return ProbeAnswer::Closed;
    }
    match header[0] {
        // Alert: level, description.
        21 if body.len() >= 2 => ProbeAnswer::Alert(body[1]),
        22 => parse_server_hello(&body).unwrap_or(ProbeAnswer::Closed),
        _ => ProbeAnswer::Closed,
    }
}

/// The version and suite from a ServerHello (the first handshake message in `body`).
fn parse_server_hello(body: &[u8]) -> Option<ProbeAnswer> {
    if *body.first()? != 2 {
        return None;
    }
    let hello = body.get(4..)?;
    let version = u16::from_be_bytes([*hello.first()?, *hello.get(1)?]);
    let session_id_len = usize::from(*hello.get(34)?);
    let at = 35 + session_id_len;
    let suite = u16::from_be_bytes([*hello.get(at)?, *hello.get(at + 1)?]);
    Some(ProbeAnswer::Accepted { version, suite })
}

fn push_u16(out: &mut Vec<u8>, value: u16) {
    out.extend_from_slice(&value.to_be_bytes());
}

/// Appends `body` prefixed with its length as two bytes.
fn push_vec16(out: &mut Vec<u8>, body: &[u8]) {
    push_u16(out, body.len() as u16);
    out.extend_from_slice(body);
}

fn extension(out: &mut Vec<u8>, kind: u16, body: &[u8]) {
    push_u16(out, kind);
    push_vec16(out, body);
}

/// A complete ClientHello record.
pub fn client_hello(protocol: Protocol, suites: &[u16], server_name: Option<&str>) -> Vec<u8> {
    let mut random = [0u8; 32];
    let _ = aws_lc_rs::rand::fill(&mut random);
    let mut hello = Vec::with_capacity(512);
    push_u16(&mut hello, protocol.wire());
    hello.extend_from_slice(&random);
    hello.push(0); // no session id
    let mut suite_bytes = Vec::with_capacity(suites.len() * 2 + 2);
    for suite in suites {
        push_u16(&mut suite_bytes, *suite);
    }
    // TLS_EMPTY_RENEGOTIATION_INFO_SCSV: some servers refuse hellos without secure
    // renegotiation.
    push_u16(&mut suite_bytes, 0x00FF);
    push_vec16(&mut hello, &suite_bytes);
    hello.extend_from_slice(&[1, 0]); // compression: null only
    if protocol != Protocol::Ssl3 {
        let mut extensions = Vec::new();
        if let Some(name) = server_name.filter(|n| n.parse::<std::net::IpAddr>().is_err()) {
            let mut entry = vec![0u8]; // host_name
            push_vec16(&mut entry, name.as_bytes());
            let mut list = Vec::new();
            push_vec16(&mut list, &entry);
            extension(&mut extensions, 0x0000, &list);
        }
        // supported_groups: x25519, P-256, P-384, P-521, ffdhe2048.
        let mut groups = Vec::new();
        for group in [0x001D, 0x0017, 0x0018, 0x0019, 0x0100] {
            push_u16(&mut groups, group);
        }
        let mut list = Vec::new();
        push_vec16(&mut list, &groups);
        extension(&mut extensions, 0x000A, &list);
        extension(&mut extensions, 0x000B, &[1, 0]); // ec_point_formats: uncompressed
                                                     // signature_algorithms, including the SHA-1 ones old servers need.
        let mut schemes = Vec::new();
        for scheme in [
            0x0403, 0x0503, 0x0603, 0x0804, 0x0805, 0x0806, 0x0401, 0x0501, 0x0601, 0x0807, 0x0203,
            0x0201,
        ] {
            push_u16(&mut schemes, scheme);
        }
        let mut list = Vec::new();
        push_vec16(&mut list, &schemes);
        extension(&mut extensions, 0x000D, &list);
        extension(&mut extensions, 0xFF01, &[0]); // renegotiation_info, empty
        push_vec16(&mut hello, &extensions);
    }
    let mut handshake = vec![1u8]; // ClientHello
    let length = hello.len() as u32;
    handshake.extend_from_slice(&length.to_be_bytes()[1..]);
    handshake.extend_from_slice(&hello);
    // The record layer says TLS 1.0 (SSLv3 for an SSLv3 probe), as real clients do.
    let mut record = vec![22u8];
    push_u16(&mut record, protocol.wire().min(0x0301));
    push_vec16(&mut record, &handshake);
    record
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_hello_lengths_are_consistent() {
        let record = client_hello(Protocol::Tls12, &[0xC02B, 0xC02F], Some("example.com"));
        assert_eq!(record[0], 22);
        assert_eq!(&record[1..3], &[3, 1]);
        let record_len = usize::from(u16::from_be_bytes([record[3], record[4]]));
        assert_eq!(record_len, record.len() - 5);
        let handshake = &record[5..];
        assert_eq!(handshake[0], 1);
        let hello_len = u32::from_be_bytes([0, handshake[1], handshake[2], handshake[3]]);
        assert_eq!(hello_len as usize, handshake.len() - 4);
        assert_eq!(&handshake[4..6], &[3, 3]);
        assert!(record
            .windows(b"example.com".len())
            .any(|w| w == b"example.com"));
        let ssl3 = client_hello(Protocol::Ssl3, &[0x000A], Some("example.com"));
        assert_eq!(&ssl3[1..3], &[3, 0]);
        assert!(!ssl3.windows(11).any(|w| w == b"example.com"));
    }

    #[test]
    fn server_hello_is_read() {
        let mut body = vec![2, 0, 0, 0x46, 3, 3];
        body.extend_from_slice(&[7; 32]);
        body.push(32);
        body.extend_from_slice(&[9; 32]);
        body.extend_from_slice(&[0xC0, 0x2F, 0]);
        assert_eq!(
            parse_server_hello(&body),
            Some(ProbeAnswer::Accepted {
                version: 0x0303,
                suite: 0xC02F
            })
        );
        assert_eq!(parse_server_hello(&body[..20]), None);
    }
}
