//! Kubernetes resource quantities (`100m`, `1.5`, `256Mi`, `1e3`): validation, comparison and sums.

/// Whether `s` is a quantity the API server accepts.
pub fn is_valid(s: &str) -> bool {
    parse(s).is_some()
}

/// The value of a quantity in base units (cores or bytes), or `None` when it is not a quantity.
pub fn parse(s: &str) -> Option<f64> {
    let s = s.strip_prefix('+').unwrap_or(s);
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    if number.is_empty() || number == "." || number.matches('.').count() > 1 {
        return None;
    }
    let value: f64 = number.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exp if exp.starts_with(['e', 'E']) => {
            let digits = exp[1..].strip_prefix(['+', '-']).unwrap_or(&exp[1..]);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            10f64.powi(exp[1..].parse::<i32>().ok()?)
        }
        _ => return None,
    };
    Some(value * factor)
}

/// A byte count written as a quantity the API server accepts, in whole Gi or Mi when exact.
pub fn bytes(n: u64) -> String {
    const MI: u64 = 1024 * 1024;
    const GI: u64 = 1024 * MI;
    if n > 0 && n.is_multiple_of(GI) {
        format!("{}Gi", n / GI)
    } else if n.is_multiple_of(MI) {
        format!("{}Mi", n / MI)
    } else {
        n.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_forms_the_api_server_accepts() {
        for (s, v) in [
            ("100m", 0.1),
            ("1", 1.0),
            ("1.5", 1.5),
            ("256Mi", 268435456.0),
            ("1e3", 1000.0),
            ("+2k", 2000.0),
        ] {
            assert_eq!(parse(s), Some(v), "{s}");
        }
    }

    #[test]
    fn refuses_what_is_not_a_quantity() {
        for s in ["", "lots", "1.2.3", "Mi", "1MB", "1e", "-1", "1 Gi", "."] {
            assert_eq!(parse(s), None, "{s}");
        }
    }

    #[test]
    fn byte_counts_are_written_in_mi_when_exact() {
        assert_eq!(bytes(512 * 1024 * 1024), "512Mi");
        assert_eq!(bytes(2 * 1024 * 1024 * 1024), "2Gi");
        assert_eq!(bytes(1000), "1000");
    }
}
