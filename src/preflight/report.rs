//! The result of a preflight run: one [`Check`] per line, printed as a table or as JSON.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

/// How a check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// It works (`✔`).
    Pass,
    /// It does not work; the remedy says what to do (`✘`). Makes the exit code non-zero.
    Fail,
    /// Worth knowing, nothing to do (`!`). Does not change the exit code.
    Note,
    /// Not run because an earlier check failed (`-`).
    Skipped,
}

impl Outcome {
    /// The table symbol.
    pub fn symbol(self) -> &'static str {
        match self {
            Outcome::Pass => "✔",
            Outcome::Fail => "✘",
            Outcome::Note => "!",
            Outcome::Skipped => "-",
        }
    }
}

/// One checked fact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Stable id for scripts (`token`, `permission.create-application`, `graphql.page-size`, ...).
    pub id: String,
    /// The name shown in the table.
    pub name: String,
    /// How it ended.
    pub outcome: Outcome,
    /// What was found.
    pub detail: String,
    /// What to do, for [`Outcome::Fail`], in the words of `docs/carerix-setup.md`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remedy: Option<String>,
    /// How long the answer took, when the check is one API call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub millis: Option<u64>,
}

impl Check {
    /// A passed check.
    pub fn pass(id: &str, name: &str, detail: impl Into<String>) -> Check {
        Check {
            id: id.into(),
            name: name.into(),
            outcome: Outcome::Pass,
            detail: detail.into(),
            remedy: None,
            millis: None,
        }
    }

    /// A failed check with its remedy.
    pub fn fail(id: &str, name: &str, detail: impl Into<String>, remedy: impl Into<String>) -> Check {
        Check {
            id: id.into(),
            name: name.into(),
            outcome: Outcome::Fail,
            detail: detail.into(),
            remedy: Some(remedy.into()),
            millis: None,
        }
    }

    /// A note.
    pub fn note(id: &str, name: &str, detail: impl Into<String>) -> Check {
        Check { outcome: Outcome::Note, ..Check::pass(id, name, detail) }
    }

    /// A skipped check.
    pub fn skipped(id: &str, name: &str, why: impl Into<String>) -> Check {
        Check { outcome: Outcome::Skipped, ..Check::pass(id, name, why) }
    }

    /// The same check with its answer time.
    #[must_use]
    pub fn timed(mut self, elapsed: Duration) -> Check {
        self.millis = Some(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX));
        self
    }
}

/// A whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The tenant (realm).
    pub tenant: String,
    /// The identity host.
    pub identity_url: String,
    /// The API host.
    pub api_url: String,
    /// The client id (not a secret).
    pub client_id: String,
    /// The checks in the order they ran.
    pub checks: Vec<Check>,
    /// Whether the run was interrupted (Ctrl-C).
    pub interrupted: bool,
    /// Whether no check failed and the run was not interrupted (exit code 0).
    pub ok: bool,
}

impl Report {
    /// A report over `checks`.
    pub fn new(
        tenant: &str,
        identity_url: &str,
        api_url: &str,
        client_id: &str,
        checks: Vec<Check>,
        interrupted: bool,
    ) -> Report {
        let ok = !interrupted && checks.iter().all(|c| c.outcome != Outcome::Fail);
        Report {
            tenant: tenant.into(),
            identity_url: identity_url.into(),
            api_url: api_url.into(),
            client_id: client_id.into(),
            checks,
            interrupted,
            ok,
        }
    }

    /// The table: a header, one line per check (remedies indented below failed ones), a summary.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "preflight for tenant {} (identity {}, API {}, client {})",
            self.tenant, self.identity_url, self.api_url, self.client_id
        );
        let width = self.checks.iter().map(|c| c.name.chars().count()).max().unwrap_or(0);
        for c in &self.checks {
            let time = c.millis.map(|m| format!(" ({m} ms)")).unwrap_or_default();
            let pad = width.saturating_sub(c.name.chars().count());
            let _ = writeln!(out, "{} {}{}  {}{time}", c.outcome.symbol(), c.name, " ".repeat(pad), c.detail);
            if let Some(remedy) = &c.remedy {
                let _ = writeln!(out, "  {} → {remedy}", " ".repeat(width));
            }
        }
        let failed = self.checks.iter().filter(|c| c.outcome == Outcome::Fail).count();
        let passed = self.checks.iter().filter(|c| c.outcome == Outcome::Pass).count();
        let notes = self.checks.iter().filter(|c| c.outcome == Outcome::Note).count();
        let _ = write!(out, "{passed} passed, {failed} failed, {notes} notes");
        if self.interrupted {
            out.push_str("; interrupted, the temporary application was cleaned up");
        }
        out.push('\n');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_check_prints_its_remedy_and_fails_the_run() {
        let report = Report::new(
            "acme",
            "https://id.carerix.io",
            "https://api.carerix.io",
            "c",
            vec![
                Check::pass("token", "token", "ok").timed(Duration::from_millis(12)),
                Check::fail("scopes", "scopes", "missing x", "add x (docs/carerix-setup.md step 2)"),
            ],
            false,
        );
        assert!(!report.ok);
        let table = report.table();
        assert!(table.contains("✔ token   ok (12 ms)"), "{table}");
        assert!(table.contains("✘ scopes  missing x"), "{table}");
        assert!(table.contains("→ add x (docs/carerix-setup.md step 2)"), "{table}");
        assert!(table.ends_with("1 passed, 1 failed, 0 notes\n"), "{table}");
    }

    #[test]
    fn notes_do_not_fail_the_run_but_an_interruption_does() {
        let checks = vec![Check::note("creator", "creator", "x")];
        assert!(Report::new("a", "i", "p", "c", checks.clone(), false).ok);
        assert!(!Report::new("a", "i", "p", "c", checks, true).ok);
    }
}
