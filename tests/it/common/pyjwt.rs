//! Tokens minted by PyJWT, the independent implementation the JWT and hub tests check the
//! edge's verifier against.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// Mints tokens with PyJWT (the independent oracle): `sign ALG KEYFILE CLAIMS HEADERS`,
/// `confuse KEYFILE CLAIMS` (HS256 keyed with a public key's PEM, done by hand: PyJWT refuses
/// it), `none CLAIMS`, `jwk PUBFILE KID`.
pub const MINT: &str = r#"
import sys, json, hmac, hashlib, base64, jwt
from jwt.algorithms import RSAAlgorithm
def b64(b): return base64.urlsafe_b64encode(b).rstrip(b"=").decode()
mode = sys.argv[1]
if mode == "sign":
    alg, keyfile, claims, headers = sys.argv[2], sys.argv[3], json.loads(sys.argv[4]), json.loads(sys.argv[5])
    key = open(keyfile, "rb").read()
    if alg.startswith("HS"): key = key.strip()
    print(jwt.encode(claims, key, algorithm=alg, headers=headers or None))
elif mode == "confuse":
    key = open(sys.argv[2], "rb").read()
    signing = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + "." + b64(sys.argv[3].encode())
    print(signing + "." + b64(hmac.new(key, signing.encode(), hashlib.sha256).digest()))
elif mode == "none":
    print(jwt.encode(json.loads(sys.argv[2]), None, algorithm="none"))
elif mode == "jwk":
    from cryptography.hazmat.primitives.serialization import load_pem_public_key
    key = json.loads(RSAAlgorithm.to_jwk(load_pem_public_key(open(sys.argv[2], "rb").read())))
    key["kid"] = sys.argv[3]; key["alg"] = "RS256"; key["use"] = "sig"
    print(json.dumps(key))
"#;

pub fn python(dir: &Path, args: &[&str]) -> String {
    let script = dir.join("mint.py");
    if !script.exists() {
        std::fs::write(&script, MINT).unwrap();
    }
    let out = std::process::Command::new("python3")
        .arg(&script)
        .args(args)
        .output()
        .expect("python3 (pip install pyjwt cryptography; scripts/test.sh does)");
    assert!(
        out.status.success(),
        "mint.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn sign(dir: &Path, alg: &str, key: &str, claims: &str, headers: &str) -> String {
    python(
        dir,
        &[
            "sign",
            alg,
            dir.join(key).to_str().unwrap(),
            claims,
            headers,
        ],
    )
}
