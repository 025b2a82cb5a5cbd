//! Property tests of the ClientHello reader and of the record layer around rustls' unbuffered
//! API (docs/LIFECYCLE.md, "ClientHello reader" and "Unbuffered TLS stream").
//!
//! Seeds: hellos captured from `openssl s_client` and curl (`tests/corpus/tls/`) and written
//! by rustls' client in-test; the record layer runs real handshakes in memory.

use std::sync::OnceLock;

use proptest::prelude::*;
use proptest::sample::Index;

use super::*;
use crate::certs::generate::{CertificateAuthority, KeyAlgorithm, Usage};
use crate::fuzzing::{self, corpus, cuts, mutated, split};

/// A ClientHello as rustls' client writes it: `versions` offered, `alpn`, SNI `name`.
fn rustls_hello(
    name: &str,
    alpn: &[&[u8]],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = rustls::pki_types::ServerName::try_from(name.to_owned()).expect("a name");
    let mut client = rustls::ClientConnection::new(Arc::new(config), name).expect("a client");
    let mut hello = Vec::new();
    client.write_tls(&mut hello).expect("the hello");
    hello
}

/// Real hellos: captured from OpenSSL and curl, and rustls' own in a few configurations.
fn hellos() -> &'static [Vec<u8>] {
    static HELLOS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    HELLOS.get_or_init(|| {
        vec![
            corpus("tls/openssl-s_client.bin"),
            corpus("tls/openssl-tls12-fallback-scsv.bin"),
            corpus("tls/curl.bin"),
            rustls_hello("app.fuzz.test", &[b"h2", b"http/1.1"], rustls::ALL_VERSIONS),
            rustls_hello("tls12.fuzz.test", &[], &[&rustls::version::TLS12]),
            rustls_hello(
                "acme.fuzz.test",
                &[b"acme-tls/1"],
                &[&rustls::version::TLS13],
            ),
        ]
    })
}

/// The summary of a hello read whole, and its message.
fn whole(bytes: &[u8]) -> (Vec<u8>, Option<ClientHelloSummary>) {
    match HelloReader::default().advance(bytes) {
        HelloProgress::Complete(message) => {
            let summary = parse_client_hello(&message);
            (message, summary)
        }
        _ => panic!("not a whole hello"),
    }
}

/// The handshake message of a hello, cut into records of the given sizes (cycled).
fn refragment(hello: &[u8], sizes: &[usize]) -> Vec<u8> {
    let (message, _) = whole(hello);
    let mut handshake = vec![1];
    handshake.extend_from_slice(&(message.len() as u32).to_be_bytes()[1..]);
    handshake.extend_from_slice(&message);
    let mut out = Vec::new();
    let mut rest = &handshake[..];
    for size in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (fragment, tail) = rest.split_at((*size).clamp(1, rest.len()));
        out.extend_from_slice(&[22, 3, 1]);
        out.extend_from_slice(&(fragment.len() as u16).to_be_bytes());
        out.extend_from_slice(fragment);
        rest = tail;
    }
    out
}

/// Feeds `pieces` as reads and returns the verdict, checking the reader's invariants on the
/// way: each call is linear work, a verdict stands, nothing is kept beyond what came in.
fn read_in_pieces(pieces: &[Vec<u8>]) -> HelloProgress {
    let mut received = Vec::new();
    let mut reader = HelloReader::default();
    let mut refused = false;
    for piece in pieces {
        received.extend_from_slice(piece);
        let progress = reader.advance(&received);
        assert!(reader.examined <= 2 * received.len(), "work beyond linear");
        assert!(reader.handshake.len() <= received.len());
        match progress {
            HelloProgress::Complete(message) => {
                assert!(!refused, "a refused hello became whole");
                assert!(message.len() + 4 <= received.len());
                return HelloProgress::Complete(message);
            }
            HelloProgress::NotAHello => refused = true,
            HelloProgress::Incomplete => assert!(!refused, "a refusal was taken back"),
        }
        // read_client_hello waits on a possible request line only while it is short.
        if may_become_plain_http(&received) {
            assert!(received.len() <= LONGEST_METHOD);
        }
        let _ = is_plain_http(&received);
    }
    if refused {
        HelloProgress::NotAHello
    } else {
        HelloProgress::Incomplete
    }
}

/// What rustls reads in a hello: server name, ALPN protocols, cipher suites.
type RustlsReading = (Option<String>, Vec<Vec<u8>>, Vec<u16>);

/// rustls' own reading of a hello, where rustls accepts it: the oracle for ours.
fn rustls_reading(bytes: &[u8]) -> Option<RustlsReading> {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut input = bytes;
    while !input.is_empty() {
        if acceptor.read_tls(&mut input).ok()? == 0 {
            break;
        }
    }
    let accepted = acceptor.accept().ok()??;
    let hello = accepted.client_hello();
    Some((
        hello.server_name().map(str::to_owned),
        hello
            .alpn()
            .map(|protocols| protocols.map(<[u8]>::to_vec).collect())
            .unwrap_or_default(),
        hello
            .cipher_suites()
            .iter()
            .map(|s| u16::from(*s))
            .collect(),
    ))
}

#[test]
fn fuzz_hello_split_at_every_byte_reads_as_whole() {
    for hello in hellos() {
        let (_, expected) = whole(hello);
        assert!(expected.is_some(), "a real hello parses");
        // Whole records, and the same message one byte per record.
        for bytes in [hello.clone(), refragment(hello, &[1])] {
            for cut in 0..=bytes.len() {
                let progress = read_in_pieces(&[bytes[..cut].to_vec(), bytes[cut..].to_vec()]);
                let HelloProgress::Complete(message) = progress else {
                    panic!("cut at {cut}: not whole");
                };
                assert_eq!(parse_client_hello(&message), expected, "cut at {cut}");
            }
        }
    }
}

#[test]
fn fuzz_hello_fallback_scsv_is_seen_in_a_captured_downgrade() {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls13 = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(rustls::server::ResolvesServerCertUsingSni::new()));
    let (_, downgraded) = whole(&corpus("tls/openssl-tls12-fallback-scsv.bin"));
    let downgraded = downgraded.expect("it parses");
    assert_eq!(downgraded.highest_version, 0x0303);
    assert_eq!(
        downgraded.server_name.as_deref(),
        Some("fallback.fuzz.test")
    );
    assert!(downgraded.is_inappropriate_fallback(&tls13));
    for hello in [&hellos()[0], &hellos()[2], &hellos()[3]] {
        let (_, summary) = whole(hello);
        assert!(!summary
            .expect("it parses")
            .is_inappropriate_fallback(&tls13));
    }
}

/// Found by `fuzz_hello_mutated_is_refused_or_read_like_rustls`: an SNI list whose second
/// entry has an unknown type (here the captured name's length byte lowered, so the rest of
/// the name reads as an entry of type `p`). rustls stops reading the list there and takes the
/// first name; we refused the whole hello, so the two disagreed on the name.
#[test]
fn fuzz_regression_an_sni_entry_of_unknown_type_ends_the_list_as_in_rustls() {
    let mut bytes = corpus("tls/openssl-s_client.bin");
    assert_eq!(bytes[152], 17, "the length of `openssl.fuzz.test`");
    bytes[152] = 1;
    let (_, summary) = whole(&bytes);
    assert_eq!(summary.and_then(|s| s.server_name).as_deref(), Some("o"));
    let (name, _, _) = rustls_reading(&bytes).expect("rustls accepts it");
    assert_eq!(name.as_deref(), Some("o"));
}

/// Found by `fuzz_records_mutated_are_refused_or_intact`: a hello whose second record is
/// malformed, after rustls has taken the first into its handshake deframer. Asking rustls for
/// the alert with an empty buffer (or a second time) panicked inside rustls.
#[test]
fn fuzz_regression_a_hello_failing_in_its_second_record_gets_an_alert_not_a_panic() {
    let mut bytes = refragment(&hellos()[3], &[100]);
    let second = 5 + 100;
    bytes[second] = 0x99; // not a content type
    let mut session = server_session();
    let error = session.process(&mut bytes, None, Write::Nothing);
    assert!(error.is_err(), "refused");
    assert_eq!(
        session.outgoing.bytes.first(),
        Some(&21),
        "an alert record is queued"
    );
    assert!(session
        .process(&mut bytes, None, Write::CloseNotify)
        .is_err());
}

proptest! {
    #![proptest_config(fuzzing::config(2000))]

    /// A valid hello cut into any records and any reads gives the summary it gives whole.
    #[test]
    fn fuzz_hello_refragmented_and_split_reads_as_whole(
        seed in prop::sample::select(hellos().to_vec()),
        sizes in prop::collection::vec(1usize..600, 1..8),
        cuts in cuts(),
    ) {
        let (_, expected) = whole(&seed);
        let bytes = refragment(&seed, &sizes);
        let HelloProgress::Complete(message) = read_in_pieces(&split(&bytes, &cuts)) else {
            panic!("not whole");
        };
        prop_assert_eq!(parse_client_hello(&message), expected);
    }

    /// Mutated hellos, read in pieces: no panic, linear work, a verdict that stands; where
    /// rustls accepts the hello, the same name, protocols and suites as rustls reads.
    #[test]
    fn fuzz_hello_mutated_is_refused_or_read_like_rustls(
        bytes in mutated(hellos().to_vec()),
        cuts in cuts(),
    ) {
        let progress = read_in_pieces(&split(&bytes, &cuts));
        let ours = match progress {
            HelloProgress::Complete(message) => parse_client_hello(&message),
            _ => None,
        };
        if let Some((name, alpn, suites)) = rustls_reading(&bytes) {
            // What rustls accepts, we read too.
            prop_assert!(ours.is_some(), "rustls accepts a hello we do not read");
            let Some(ours) = &ours else { unreachable!() };
            if let Some(name) = name {
                let name = name.to_ascii_lowercase();
                prop_assert_eq!(ours.server_name.as_deref(), Some(name.trim_end_matches('.')));
            }
            prop_assert_eq!(&ours.alpn, &alpn);
            let our_suites: Vec<u16> = ours.cipher_suites.iter().map(|s| u16::from(*s)).collect();
            prop_assert_eq!(our_suites, suites);
        }
    }

    /// A hello that claims more than it sends, in many small records, is never taken as
    /// whole and costs linear work up to the reader's limit.
    #[test]
    fn fuzz_hello_claiming_more_than_sent_stays_incomplete(
        claimed in 1usize..(1 << 24),
        sizes in prop::collection::vec(1usize..64, 1..8),
        cuts in cuts(),
    ) {
        let mut handshake = vec![1];
        handshake.extend_from_slice(&(claimed as u32).to_be_bytes()[1..]);
        let sent = claimed.min(MAX_CLIENT_HELLO / 2) - 1;
        handshake.resize(4 + sent, 0);
        let mut bytes = Vec::new();
        let mut rest = &handshake[..];
        for size in sizes.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (fragment, tail) = rest.split_at((*size).min(rest.len()));
            rest = tail;
            bytes.extend_from_slice(&[22, 3, 3]);
            bytes.extend_from_slice(&(fragment.len() as u16).to_be_bytes());
            bytes.extend_from_slice(fragment);
        }
        prop_assert!(matches!(read_in_pieces(&split(&bytes, &cuts)), HelloProgress::Incomplete));
    }

    /// Arbitrary bytes, too (plain text, other protocols).
    #[test]
    fn fuzz_hello_arbitrary_bytes_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..256),
        cuts in cuts(),
    ) {
        let _ = read_in_pieces(&split(&bytes, &cuts));
        let _ = parse_client_hello(&bytes);
    }
}

// The record layer: `Session::process` over a real handshake with rustls' client, the bytes
// between them mutated, driven as `TlsServerStream::poll_handshake` and `poll_read` drive it.

pub(in crate::tls) struct Pki {
    pub(in crate::tls) server: Arc<ServerConfig>,
    pub(in crate::tls) client: Arc<rustls::ClientConfig>,
}

/// A CA, a server config for `fuzz.test` and a client config that trusts it.
pub(in crate::tls) fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let ca = CertificateAuthority::new(
            "fuzz CA",
            std::time::Duration::from_secs(86_400),
            KeyAlgorithm::EcdsaP256,
        )
        .expect("a CA");
        let leaf = ca
            .issue(
                &["fuzz.test".to_owned()],
                std::time::Duration::from_secs(86_400),
                KeyAlgorithm::EcdsaP256,
                Usage::Server,
            )
            .expect("a leaf");
        let key = crate::certs::pem::private_key_from_bytes(
            leaf.key_pem.as_bytes(),
            std::path::Path::new("leaf.key"),
        )
        .expect("the key");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der.clone()], key)
            .expect("a server config");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert_der.clone()).expect("the root");
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Pki {
            server: Arc::new(server),
            client: Arc::new(client),
        }
    })
}

fn server_session() -> Session {
    Session {
        connection: UnbufferedServerConnection::new(pki().server.clone()).expect("a session"),
        plaintext: PlaintextQueue::default(),
        outgoing: Outgoing::default(),
        failed: None,
    }
}

/// Whether `bytes` start with a whole TLS record.
fn holds_whole_record(bytes: &[u8]) -> bool {
    bytes.len() >= 5 && bytes.len() >= 5 + usize::from(u16::from_be_bytes([bytes[3], bytes[4]]))
}

/// One `process` run over what has arrived, as `poll_handshake` (no reader) or `poll_read`
/// (with one) does it. Checks that it ends in a verdict or with no whole record left unread
/// but handshake fragments rustls is joining (else the stream would wait for bytes it does not
/// need), and that what is carried stays within the stream's limit.
fn process_arrived(
    session: &mut Session,
    partial: &mut Vec<u8>,
    reader: Option<&mut ReadBuf<'_>>,
) -> Result<Step, rustls::Error> {
    let processed = session.process(partial, reader, Write::Nothing)?;
    partial.drain(..processed.consumed);
    if processed.step == Step::NeedsData && session.connection.is_handshaking() {
        // rustls keeps the records of a handshake message it is still joining (it discards
        // them once the message is whole); any other whole record would be a stall.
        assert!(
            !holds_whole_record(partial) || partial[0] == 22,
            "waiting for more with a whole record unread: {:?}",
            &partial[..5]
        );
    }
    assert!(partial.len() <= MAX_CLIENT_HELLO + MAX_RECORD + 4096);
    Ok(processed.step)
}

/// Hands the server's queued bytes to the client; false if the client gave up.
fn to_client(session: &mut Session, client: &mut rustls::ClientConnection) -> bool {
    let outgoing = std::mem::take(&mut session.outgoing).bytes;
    let mut input = &outgoing[..];
    while !input.is_empty() {
        match client.read_tls(&mut input) {
            Ok(0) | Err(_) => return false,
            Ok(_) => {}
        }
        if client.process_new_packets().is_err() {
            return false;
        }
    }
    true
}

/// What a mutated run may end in.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// rustls refused the bytes.
    Refused,
    /// Nothing more to do: the client gave up, or the bytes ended mid-way.
    Stopped,
    /// The handshake finished and this plaintext came through.
    Delivered(Vec<u8>),
}

/// A handshake and one message of application data from rustls' client to a server session,
/// each client flight passed through `tamper` (by flight number) and cut into `cuts` reads.
fn run(
    message: &[u8],
    cuts: &[Index],
    mut tamper: impl FnMut(usize, Vec<u8>) -> Vec<u8>,
) -> Outcome {
    let name = rustls::pki_types::ServerName::try_from("fuzz.test").expect("a name");
    let mut client = rustls::ClientConnection::new(pki().client.clone(), name).expect("a client");
    let mut session = server_session();
    let mut partial = Vec::new();
    let mut sent_message = false;
    let mut plaintext = vec![0u8; 2 * MAX_RECORD];
    let mut delivered = Vec::new();
    for flight in 0..8 {
        if !client.is_handshaking() && !sent_message {
            use std::io::Write as _;
            sent_message = true;
            if client.writer().write_all(message).is_err() {
                return Outcome::Stopped;
            }
        }
        let mut bytes = Vec::new();
        while client.wants_write() {
            if client.write_tls(&mut bytes).is_err() {
                return Outcome::Stopped;
            }
        }
        let bytes = tamper(flight, bytes);
        if bytes.is_empty() && sent_message {
            break;
        }
        for piece in split(&bytes, cuts) {
            partial.extend_from_slice(&piece);
            let handshaking = session.connection.is_handshaking();
            let mut reader = ReadBuf::new(&mut plaintext);
            let step = if handshaking {
                process_arrived(&mut session, &mut partial, None)
            } else {
                process_arrived(&mut session, &mut partial, Some(&mut reader))
            };
            delivered.extend_from_slice(reader.filled());
            match step {
                Err(_) => {
                    // What `poll_shutdown` or a later write would ask after a failed read,
                    // whose carried bytes are not those rustls last saw.
                    let close = session.process(&mut [], None, Write::CloseNotify);
                    assert!(close.is_err(), "a failed session is not used again");
                    return Outcome::Refused;
                }
                Ok(Step::PeerClosed | Step::Closed) => return Outcome::Stopped,
                Ok(Step::NeedsData | Step::Writable) => {}
            }
            if !to_client(&mut session, &mut client) {
                return Outcome::Stopped;
            }
        }
    }
    if session.connection.is_handshaking() {
        return Outcome::Stopped;
    }
    delivered.extend_from_slice(session.plaintext.waiting());
    Outcome::Delivered(delivered)
}

proptest! {
    #![proptest_config(fuzzing::config(1000))]

    /// Untouched records, cut anywhere: the handshake completes and the plaintext is whole.
    #[test]
    fn fuzz_records_split_anywhere_deliver_the_plaintext(
        message in prop::collection::vec(any::<u8>(), 1..40_000),
        cuts in cuts(),
    ) {
        prop_assert_eq!(run(&message, &cuts, |_, bytes| bytes), Outcome::Delivered(message));
    }

    /// One client flight mutated: rustls refuses, the run stops, or the plaintext that comes
    /// through is what the client sent (a prefix of it where records were cut short). Never
    /// a panic, a wait with a whole record unread, or altered plaintext.
    #[test]
    fn fuzz_records_mutated_are_refused_or_intact(
        message in prop::collection::vec(any::<u8>(), 1..2000),
        flight in 0usize..3,
        mutations in fuzzing::mutations(),
        cuts in cuts(),
    ) {
        let outcome = run(&message, &cuts, |at, bytes| {
            if at == flight { fuzzing::apply(bytes, &mutations) } else { bytes }
        });
        if let Outcome::Delivered(delivered) = outcome {
            prop_assert!(message.starts_with(&delivered), "altered plaintext");
        }
    }
}

/// The real `TlsServerStream` on a loopback socket, a rustls client on the other end whose
/// flight number `flight` is mutated. The client gives up on a silent server after a moment
/// and closes its side, so every run ends: the server must then finish too, with an error or
/// with a prefix of what the client sent.
fn over_tcp(message: &[u8], flight: usize, mutations: &[fuzzing::Mutation]) -> io::Result<Vec<u8>> {
    use std::io::Write as _;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = async {
            let (tcp, _) = listener.accept().await?;
            let mut stream =
                TlsServerStream::accept(tcp, Vec::new(), pki().server.clone(), None).await?;
            let mut got = Vec::new();
            match stream.read_to_end(&mut got).await {
                Ok(_) => Ok(got),
                // What came before a failure is what counts.
                Err(_) if !got.is_empty() => Ok(got),
                Err(error) => Err(error),
            }
        };
        let client = async {
            let mut tcp = TcpStream::connect(addr).await?;
            let name = rustls::pki_types::ServerName::try_from("fuzz.test").expect("a name");
            let mut conn =
                rustls::ClientConnection::new(pki().client.clone(), name).expect("a client");
            let mut flights = 0;
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                if !conn.is_handshaking() && flights < 100 {
                    conn.writer().write_all(message)?;
                    conn.send_close_notify();
                    flights = 100;
                }
                let mut out = Vec::new();
                while conn.wants_write() {
                    conn.write_tls(&mut out)?;
                }
                if !out.is_empty() {
                    if flights == flight {
                        out = fuzzing::apply(out, mutations);
                    }
                    flights += 1;
                    tcp.write_all(&out).await?;
                }
                if flights > 100 {
                    break;
                }
                let read =
                    tokio::time::timeout(Duration::from_millis(50), tcp.read(&mut buf)).await;
                let Ok(Ok(n @ 1..)) = read else { break };
                if conn.read_tls(&mut &buf[..n]).is_err() || conn.process_new_packets().is_err() {
                    break;
                }
            }
            tcp.shutdown().await
        };
        let (served, _) = tokio::time::timeout(Duration::from_secs(20), async {
            tokio::join!(server, client)
        })
        .await
        .map_err(|_| io::Error::other("the server did not finish after the client closed"))?;
        served
    })
}

proptest! {
    #![proptest_config(fuzzing::config(300))]

    /// Through a real socket: the handshake and a message, one client flight mutated.
    #[test]
    fn fuzz_stream_over_tcp_errors_or_delivers_intact(
        message in prop::collection::vec(any::<u8>(), 1..3000),
        flight in 0usize..3,
        mutations in fuzzing::mutations(),
    ) {
        match over_tcp(&message, flight, &mutations) {
            Ok(got) => prop_assert!(message.starts_with(&got), "altered plaintext"),
            Err(error) => prop_assert!(
                !error.to_string().contains("did not finish"),
                "{error}"
            ),
        }
    }
}

#[test]
fn fuzz_stream_over_tcp_untouched_delivers_the_message() {
    let message = b"GET / HTTP/1.1\r\nhost: fuzz.test\r\n\r\n".repeat(100);
    let got = over_tcp(&message, usize::MAX, &[]).expect("a clean run");
    assert_eq!(got, message);
}
