//! Batching texts of similar length together: a batch is padded to its
//! longest text, so a short chunk batched with full ones costs as much as
//! they do.

/// The indices of `texts`, longest first (by bytes, which follow the token
/// count closely enough to group texts).
pub(crate) fn longest_first<S: AsRef<str>>(texts: &[S]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..texts.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(texts[i].as_ref().len()));
    order
}

/// Puts results computed in `order` back in the inputs' order.
pub(crate) fn restore<T>(order: &[usize], results: Vec<T>) -> Vec<T> {
    let mut slots: Vec<Option<T>> = std::iter::repeat_with(|| None).take(results.len()).collect();
    for (&at, result) in order.iter().zip(results) {
        slots[at] = Some(result);
    }
    slots.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_come_back_in_input_order() {
        let texts = ["bb", "a", "dddd", "ccc"];
        let order = longest_first(&texts);
        assert_eq!(order, [2, 3, 0, 1]);
        let results: Vec<usize> = order.iter().map(|&i| texts[i].len()).collect();
        assert_eq!(restore(&order, results), [2, 1, 4, 3]);
    }
}
