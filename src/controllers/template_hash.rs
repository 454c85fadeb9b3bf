//! The `pod-template-hash` label of ReplicaSets a Deployment owns: a stable hash of the pod
//! template (and the collision count), spelled with kube's safe alphabet.
use serde_json::Value;

/// kube's `rand.SafeEncodeString` alphabet (no vowels, no look-alikes).
const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn fnv32a(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// The hash of a template; equal templates (key order aside) hash equal.
pub fn compute(template: &Value, collision_count: Option<i32>) -> String {
    // serde_json's Map keeps keys sorted, so the serialisation is canonical.
    let mut bytes = serde_json::to_vec(template).unwrap_or_default();
    if let Some(c) = collision_count {
        bytes.extend_from_slice(&c.to_le_bytes());
    }
    fnv32a(&bytes)
        .to_string()
        .bytes()
        .map(|d| ALPHABET[usize::from(d) % ALPHABET.len()] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hashes_are_stable_and_safe() {
        let a = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"containers": []}});
        let b: Value = serde_json::from_str(
            r#"{"spec": {"containers": []}, "metadata": {"labels": {"b": "2", "a": "1"}}}"#,
        )
        .unwrap();
        assert_eq!(compute(&a, None), compute(&b, None));
        assert_ne!(compute(&a, None), compute(&a, Some(1)));
        assert!(compute(&a, None).bytes().all(|c| ALPHABET.contains(&c)));
    }
}
