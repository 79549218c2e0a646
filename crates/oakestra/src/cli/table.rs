//! Plain-text tables and key/value blocks for terminal output, aligned without any dependency.

/// Columns are separated by this many spaces (as kubectl and docker do).
const GAP: usize = 3;

/// A table with a header row; every cell is one line, padded to the widest cell of its column.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Self { header: header.iter().map(|h| h.to_string()).collect(), rows: Vec::new() }
    }

    /// Adds a row; missing cells are blank and surplus ones dropped, so a mistake in a caller
    /// can never misalign the other columns.
    pub fn push(&mut self, row: Vec<String>) {
        let mut row: Vec<String> = row.into_iter().take(self.header.len()).map(|c| cell(&c)).collect();
        row.resize(self.header.len(), cell(""));
        self.rows.push(row);
    }

    /// The table as text, one line per row, each ending in `\n`, without trailing spaces.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| width(h)).collect();
        for row in &self.rows {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(width(c));
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (i, (c, w)) in row.iter().zip(&widths).enumerate() {
                if i > 0 {
                    line.push_str(&" ".repeat(GAP));
                }
                line.push_str(c);
                line.push_str(&" ".repeat(w - width(c)));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `Label:   value` lines with the values aligned, for showing one object.
pub fn render_fields(fields: &[(&str, String)]) -> String {
    let label_width = fields.iter().map(|(l, _)| width(l) + 1).max().unwrap_or(0);
    let mut out = String::new();
    for (label, value) in fields {
        let label = format!("{label}:");
        let line = format!("{label}{}{}", " ".repeat(label_width - width(&label) + GAP), cell(value));
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A number without a pointless `.0` (CPU counts are floats on the wire but mostly whole).
pub fn number(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x:.1}")
    }
}

/// One-line cell text: control characters (a newline in a description) become spaces, and an
/// empty value shows as `-` so that columns stay readable.
fn cell(text: &str) -> String {
    let text: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let text = text.trim();
    if text.is_empty() {
        "-".to_string()
    } else {
        text.to_string()
    }
}

/// Display width, counted in characters (good enough for names and ids).
fn width(text: &str) -> usize {
    text.chars().count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_aligned_to_the_widest_cell() {
        let mut t = Table::new(&["ID", "NAME", "DESCRIPTION"]);
        t.push(vec!["1".into(), "clientsrvr".into(), "demo".into()]);
        t.push(vec!["12345".into(), "x".into(), "".into()]);
        assert_eq!(
            t.render(),
            "ID      NAME         DESCRIPTION\n\
             1       clientsrvr   demo\n\
             12345   x            -\n"
        );
    }

    #[test]
    fn empty_table_is_just_the_header() {
        assert_eq!(Table::new(&["NAME", "LOCATION"]).render(), "NAME   LOCATION\n");
    }

    #[test]
    fn cells_stay_on_one_line_and_rows_keep_their_shape() {
        let mut t = Table::new(&["A", "B", "C"]);
        t.push(vec!["multi\nline".into()]);
        t.push(vec!["1".into(), "2".into(), "3".into(), "surplus".into()]);
        assert_eq!(t.render(), "A            B   C\nmulti line   -   -\n1            2   3\n");
    }

    #[test]
    fn unicode_is_counted_in_characters() {
        let mut t = Table::new(&["NAME", "X"]);
        t.push(vec!["münchen".into(), "1".into()]);
        assert_eq!(t.render(), "NAME      X\nmünchen   1\n");
    }

    #[test]
    fn fields_are_aligned_after_the_longest_label() {
        let out = render_fields(&[("ID", "42".into()), ("Job name", "a.b.c.d".into()), ("Status", String::new())]);
        assert_eq!(out, "ID:         42\nJob name:   a.b.c.d\nStatus:     -\n");
    }

    #[test]
    fn numbers_drop_a_zero_fraction() {
        assert_eq!(number(4.0), "4");
        assert_eq!(number(2.5), "2.5");
        assert_eq!(number(0.0), "0");
    }
}
