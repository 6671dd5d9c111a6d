//! The `metav1.Status` a v4 remotecommand client reads from the error stream
//! once the process is over: how `kubectl exec` learns the exit code.

use serde_json::json;

/// Success, or the exit code in the shape client-go looks for.
pub fn exit(code: i32, command: &[String]) -> Vec<u8> {
    let value = if code == 0 {
        json!({ "metadata": {}, "status": "Success" })
    } else {
        json!({
            "metadata": {},
            "status": "Failure",
            "message": format!(
                "command terminated with non-zero exit code: error executing command [{}], exit code {code}",
                command.join(" ")
            ),
            "reason": "NonZeroExitCode",
            "details": { "causes": [{ "reason": "ExitCode", "message": code.to_string() }] },
        })
    };
    value.to_string().into_bytes()
}

/// The process could not be run at all.
pub fn internal_error(message: &str) -> Vec<u8> {
    json!({
        "metadata": {},
        "status": "Failure",
        "message": format!("Internal error occurred: {message}"),
        "reason": "InternalError",
        "details": { "causes": [{ "message": message }] },
        "code": 500,
    })
    .to_string()
    .into_bytes()
}

/// What goes on the error channel when `outcome` is known: the v4 status,
/// or for older protocols a message only when something went wrong.
pub fn for_outcome(outcome: &crate::Outcome, v4: bool, command: &[String]) -> Option<Vec<u8>> {
    use crate::Outcome;
    match (outcome, v4) {
        (Outcome::Exited(code), true) => Some(exit(*code, command)),
        (Outcome::Failed(m), true) => Some(internal_error(m)),
        (Outcome::Exited(0), false) => None,
        (Outcome::Exited(code), false) => Some(
            format!(
                "command terminated with non-zero exit code: error executing command [{}], exit code {code}",
                command.join(" ")
            )
            .into_bytes(),
        ),
        (Outcome::Failed(m), false) => Some(m.clone().into_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_zero_exit_carries_the_code_as_client_go_reads_it() {
        let v: serde_json::Value =
            serde_json::from_slice(&exit(7, &["sh".into(), "-c".into()])).unwrap_or_default();
        assert_eq!(v["status"], "Failure");
        assert_eq!(v["reason"], "NonZeroExitCode");
        assert_eq!(v["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(v["details"]["causes"][0]["message"], "7");
        let ok: serde_json::Value = serde_json::from_slice(&exit(0, &[])).unwrap_or_default();
        assert_eq!(ok["status"], "Success");
        let failed: serde_json::Value =
            serde_json::from_slice(&internal_error("no such file")).unwrap_or_default();
        assert_eq!(failed["reason"], "InternalError");
        assert_eq!(failed["code"], 500);
    }
}
