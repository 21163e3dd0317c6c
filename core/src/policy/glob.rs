//! Name globs with `*` (any run of characters) and `?` (one character).

/// A compiled glob. Patterns without wildcards compare by equality.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Glob {
    pattern: Box<str>,
    literal: bool,
}

impl Glob {
    pub fn new(pattern: &str) -> Self {
        Self { literal: !pattern.contains(['*', '?']), pattern: pattern.into() }
    }

    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// The part before the first wildcard: every name the glob matches starts with it.
    pub fn literal_prefix(&self) -> &str {
        self.pattern.find(['*', '?']).map_or(&self.pattern, |i| &self.pattern[..i])
    }

    pub fn matches(&self, candidate: &str) -> bool {
        if self.literal {
            return *self.pattern == *candidate;
        }
        wildcard_match(self.pattern.as_bytes(), candidate.as_bytes())
    }
}

/// Iterative matcher with single backtracking point: linear in practice, no recursion, so a
/// hostile pattern cannot blow the stack.
fn wildcard_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// True when any glob of the list matches.
pub fn any_matches(globs: &[Glob], candidate: &str) -> bool {
    globs.iter().any(|g| g.matches(candidate))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_like_shell_globs() {
        let cases = [
            ("prod", "prod", true),
            ("prod", "prod-eu", false),
            ("prod-*", "prod-eu", true),
            ("prod-*", "prod-", true),
            ("prod-*", "staging-eu", false),
            ("*-prod", "eu-prod", true),
            ("p?od", "prod", true),
            ("p?od", "pod", false),
            ("*", "", true),
            ("*", "anything", true),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
            ("*@example.com", "alice@example.com", true),
            ("*@example.com", "alice@example.com.evil", false),
        ];
        for (pattern, text, expected) in cases {
            assert_eq!(Glob::new(pattern).matches(text), expected, "{pattern} vs {text}");
        }
    }

    #[test]
    fn literal_prefix_stops_at_the_first_wildcard() {
        for (pattern, prefix) in [("prod", "prod"), ("prod-*", "prod-"), ("p?od", "p"), ("*-prod", ""), ("", "")] {
            assert_eq!(Glob::new(pattern).literal_prefix(), prefix, "{pattern}");
        }
    }

    #[test]
    fn pathological_patterns_stay_linear() {
        let pattern = "*a".repeat(50) + "b";
        let text = "a".repeat(10_000);
        assert!(!Glob::new(&pattern).matches(&text));
    }
}
