//! A unified diff of two texts, as `diff -u` prints it, for `--dry-run`. (imara-diff 0.2's
//! unified printer misnumbers a first hunk that starts within six lines of the top.)

use similar::{udiff, Algorithm};

/// `before` and `after` as a unified diff with three lines of context, headed by the labels.
pub fn unified(before: &str, after: &str, before_label: &str, after_label: &str) -> String {
    udiff::unified_diff(
        Algorithm::Myers,
        before,
        after,
        3,
        Some((before_label, after_label)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_hunks_from_the_first_line_shown() {
        let before = "// c\n{\n  a: 1,\n  b: 2,\n  c: 3,\n}\n";
        let after = "// c\n{\n  a: 1,\n  b: 2,\n  c: 3,\n  d: 4,\n}\n";
        assert_eq!(
            unified(before, after, "old", "new"),
            "--- old\n+++ new\n@@ -3,4 +3,5 @@\n   a: 1,\n   b: 2,\n   c: 3,\n+  d: 4,\n }\n"
        );
        let near_top = unified("{\n  a: 1,\n}\n", "{\n  a: 1,\n  b: 2,\n}\n", "old", "new");
        assert!(near_top.contains("@@ -1,3 +1,4 @@\n {\n"), "{near_top}");
    }

    #[test]
    fn a_new_file_is_all_additions() {
        let diff = unified("", "{\n}\n", "/dev/null", "new");
        assert_eq!(diff, "--- /dev/null\n+++ new\n@@ -0,0 +1,2 @@\n+{\n+}\n");
    }
}
