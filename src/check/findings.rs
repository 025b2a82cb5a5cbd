//! One line of a check report: a status and a one-line reason.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Warn,
    Fail,
}

impl Status {
    pub fn symbol(self) -> &'static str {
        match self {
            Status::Pass => "✅",
            Status::Warn => "⚠️",
            Status::Fail => "❌",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub section: &'static str,
    pub check: &'static str,
    pub status: Status,
    pub reason: String,
}

impl Finding {
    pub fn new(
        section: &'static str,
        check: &'static str,
        status: Status,
        reason: impl Into<String>,
    ) -> Self {
        Finding {
            section,
            check,
            status,
            reason: reason.into(),
        }
    }
}
