//! Wall-clock time as the gateway and the store speak it: epoch milliseconds.
//! A leaf: no crate imports.

/// Wall-clock epoch milliseconds (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn now_is_after_2020_and_moves_forward() {
        let a = super::now_ms();
        assert!(a > 1_577_836_800_000, "{a}");
        let b = super::now_ms();
        assert!(b >= a);
    }
}
