//! Property tests of the client protocol reader (`protocol::parse`): any text a client sends
//! is either a request or a refusal with a JSON error reply, never a panic; a refusal's
//! reply is valid JSON that echoes the request's `id`.

use proptest::prelude::*;

use super::protocol::{parse, Command};
use crate::fuzzing::{self, mutated};

fn seeds() -> Vec<Vec<u8>> {
    [
        r#"{"action":"subscribe","channel":"prices","coins":["bitcoin","ethereum"]}"#,
        r#"{"action":"subscribe","channels":["a","b:c"],"since":{"epoch":"ab12","offset":7},"id":3}"#,
        r#"{"action":"unsubscribe","channel":"prices"}"#,
        r#"{"action":"ping","id":"p"}"#,
        r#"{"action":"auth","token":"eyJ.x.y"}"#,
        r#"{"action":"refresh","token":"eyJ.x.y","id":9}"#,
        r#"{"action":"presence","channel":"chat:1"}"#,
        r#"{"action":"publish","channel":"chat:1","data":{"z":1,"a":[1,2,{"b":null}]}}"#,
        r#"{"jsonrpc":"2.0","method":"get_camera_list","id":1,"params":{"auth_token":"t"}}"#,
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

proptest! {
    #![proptest_config(fuzzing::config(3000))]

    #[test]
    fn fuzz_hub_messages_never_panic_and_refusals_are_json(
        bytes in mutated(seeds()),
    ) {
        let text = String::from_utf8_lossy(&bytes);
        match parse(&text) {
            Ok(request) => {
                if let Command::Publish { data, .. } = &request.command {
                    // The raw data is JSON as the client wrote it.
                    prop_assert!(serde_json::from_str::<serde_json::Value>(data.as_str()).is_ok());
                }
            }
            Err(refusal) => {
                let reply: serde_json::Value = serde_json::from_str(&refusal.to_text())
                    .map_err(|e| TestCaseError::fail(format!("reply not JSON: {e}")))?;
                prop_assert_eq!(&reply["type"], "error");
                prop_assert_eq!(reply.get("id").cloned(), refusal.id.clone());
            }
        }
    }

    #[test]
    fn fuzz_hub_arbitrary_text_never_panics(text in ".{0,300}") {
        let _ = parse(&text);
    }
}
