//! Kafka's `ssl.principal.mapping.rules` (KIP-371) for the TLS listener's client certificates
//! (`listeners.kafka_tls.client_principal_rules`): each rule is `DEFAULT` (the whole DN) or
//! `RULE:pattern/replacement/` with an optional `L` or `U` after it (lower or upper case). The
//! first rule whose pattern matches the whole DN (as Kafka writes it, see `tls.rs`) makes the
//! name: the DN with the pattern's matches replaced (`$1` for a group). A DN no rule matches is
//! refused, as Kafka refuses it.
//!
//! `/` inside a pattern or replacement is written `\/`; in a replacement `\` takes the next
//! character as it is (`\$` is a dollar sign), as in Java.

use regex::Regex;

/// One parsed rule.
#[derive(Debug, Clone)]
enum Rule {
    Default,
    Map {
        /// The pattern anchored at both ends: a rule applies when it matches the whole DN.
        whole: Regex,
        /// The pattern as written, for the replacement.
        pattern: Regex,
        /// In the regex crate's syntax (`${1}`, `$$`).
        replacement: String,
        case: Case,
    },
}

#[derive(Debug, Clone, Copy)]
enum Case {
    Keep,
    Lower,
    Upper,
}

/// The rules of `client_principal_rules`, in order.
#[derive(Debug, Clone, Default)]
pub struct PrincipalRules(Vec<Rule>);

impl PrincipalRules {
    /// Parses the rules; the error says which rule and why.
    pub fn parse(rules: &[String]) -> Result<PrincipalRules, String> {
        rules
            .iter()
            .map(|r| parse_rule(r).map_err(|why| format!("rule {r:?}: {why}")))
            .collect::<Result<_, _>>()
            .map(PrincipalRules)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The name the first matching rule makes of `dn`; `None` when no rule matches or the rule
    /// makes an empty name.
    pub fn apply(&self, dn: &str) -> Option<String> {
        for rule in &self.0 {
            match rule {
                Rule::Default => return Some(dn.to_string()),
                Rule::Map {
                    whole,
                    pattern,
                    replacement,
                    case,
                } if whole.is_match(dn) => {
                    let name = pattern.replace_all(dn, replacement.as_str());
                    let name = match case {
                        Case::Keep => name.into_owned(),
                        Case::Lower => name.to_lowercase(),
                        Case::Upper => name.to_uppercase(),
                    };
                    return (!name.is_empty()).then_some(name);
                }
                Rule::Map { .. } => {}
            }
        }
        None
    }
}

fn parse_rule(text: &str) -> Result<Rule, String> {
    let text = text.trim();
    if text == "DEFAULT" {
        return Ok(Rule::Default);
    }
    let body = text
        .strip_prefix("RULE:")
        .ok_or("a rule is DEFAULT or RULE:pattern/replacement/ with L or U after it if wanted")?;
    // Split on the slashes no backslash escapes; an escaped slash stands for itself.
    let mut parts = vec![String::new()];
    let mut chars = body.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                let next = chars.next().ok_or("it ends in a lone backslash")?;
                let part = parts.last_mut().expect("one part at least");
                if next != '/' {
                    part.push('\\');
                }
                part.push(next);
            }
            '/' => parts.push(String::new()),
            c => parts.last_mut().expect("one part at least").push(c),
        }
    }
    let [pattern, replacement, flags] = <[String; 3]>::try_from(parts)
        .map_err(|_| "expected RULE:pattern/replacement/ (two unescaped slashes, then L or U)")?;
    let case = match flags.as_str() {
        "" => Case::Keep,
        "L" => Case::Lower,
        "U" => Case::Upper,
        other => return Err(format!("{other:?} after the last slash: only L or U")),
    };
    let whole = Regex::new(&format!("^(?:{pattern})$")).map_err(|e| e.to_string())?;
    let pattern = Regex::new(&pattern).map_err(|e| e.to_string())?;
    Ok(Rule::Map {
        whole,
        pattern,
        replacement: java_replacement(&replacement),
        case,
    })
}

/// A Java replacement string (`$1`, `\x` for a literal x) in the regex crate's syntax.
fn java_replacement(java: &str) -> String {
    let mut out = String::with_capacity(java.len());
    let mut chars = java.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('$') => out.push_str("$$"),
                Some(other) => out.push(other),
                None => {}
            },
            '$' => {
                let mut group = String::new();
                while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    group.push(*d);
                    chars.next();
                }
                if group.is_empty() {
                    out.push_str("$$");
                } else {
                    out.push_str(&format!("${{{group}}}"));
                }
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(r: &[&str]) -> PrincipalRules {
        PrincipalRules::parse(&r.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    /// The examples of Kafka's documentation of `ssl.principal.mapping.rules`, and what
    /// Kafka's mapper makes of them.
    #[test]
    fn rules_map_a_dn_as_kafka_does() {
        let r = rules(&[
            r"RULE:^CN=(.*?),OU=ServiceUsers.*$/$1/",
            r"RULE:^CN=(.*?),OU=(.*?),O=(.*?),L=(.*?),ST=(.*?),C=(.*?)$/$1@$2/L",
            r"RULE:^.*[Cc][Nn]=([a-zA-Z0-9.]*).*$/$1/L",
            "DEFAULT",
        ]);
        assert_eq!(
            r.apply("CN=kafka-svc,OU=ServiceUsers,O=Unknown,L=Unknown,ST=Unknown,C=Unknown")
                .as_deref(),
            Some("kafka-svc")
        );
        assert_eq!(
            r.apply("CN=Duke,OU=JavaSoft,O=Sun Microsystems,L=Palo Alto,ST=CA,C=US")
                .as_deref(),
            Some("duke@javasoft")
        );
        assert_eq!(
            r.apply("OU=plant 2,cn=Sensor.7,O=Acme").as_deref(),
            Some("sensor.7")
        );
        assert_eq!(r.apply("O=Acme,C=DE").as_deref(), Some("O=Acme,C=DE"));
        // Upper case, an escaped slash in the pattern and the replacement, a literal dollar.
        let r = rules(&[r"RULE:^CN=(.*)\/(.*)$/$2\/$1\$/U"]);
        assert_eq!(r.apply("CN=a/b").as_deref(), Some("B/A$"));
        // No rule matches (the pattern must match the whole DN): refused.
        let r = rules(&[r"RULE:CN=admin/admin/"]);
        assert_eq!(r.apply("CN=admin,O=Acme"), None);
        assert_eq!(r.apply("CN=admin").as_deref(), Some("admin"));
        // A rule that makes an empty name: refused too.
        assert_eq!(rules(&[r"RULE:^CN=(.*)$/$1/"]).apply("CN="), None);
    }

    #[test]
    fn bad_rules_say_why() {
        for (bad, why) in [
            ("RULE:^CN=(.*)$/$1", "two unescaped slashes"),
            ("RULE:^CN=(.*)$/$1/X", "only L or U"),
            ("RULE:^CN=((.*)$/$1/", "unclosed group"),
            ("CN=(.*)/$1/", "DEFAULT or RULE:"),
            (r"RULE:^CN=(.*)$/$1/\", "lone backslash"),
        ] {
            let err = PrincipalRules::parse(&[bad.to_string()]).unwrap_err();
            assert!(err.contains(why) && err.contains("rule \""), "{bad}: {err}");
        }
    }
}
