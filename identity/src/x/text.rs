//! Text handling for X responses: HTML entities, the oEmbed blockquote, t.co
//! links, timestamps and snowflake ids.
//!
//! X escapes `&`, `<` and `>` in the syndication `text` field, and the oEmbed
//! `html` adds `&quot;`, `&#39;` and friends. Only the handful of entities X
//! emits matter here, so a small decoder is enough; unknown entities are left
//! as they are, which can only make a proof fail, never pass by accident.

/// Twitter's snowflake epoch (2010-11-04T01:42:54.657Z) in unix milliseconds.
pub const SNOWFLAKE_EPOCH_MS: u64 = 1_288_834_974_657;

/// Decodes the HTML character references X uses: `&amp;` `&lt;` `&gt;`
/// `&quot;` `&apos;` `&nbsp;` `&mdash;` `&ndash;` `&hellip;` and numeric
/// references (`&#39;`, `&#x27;`). Anything else is kept verbatim.
pub fn decode_entities(input: &str) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        // Entity names and numbers are short; a far-away ';' is not ours.
        let decoded = after
            .char_indices()
            .take(12)
            .find(|&(_, c)| c == ';')
            .and_then(|(semi, _)| decode_one(&after[..semi]).map(|c| (c, semi)));
        match decoded {
            Some((c, semi)) => {
                out.push(c);
                rest = &after[semi + 1..];
            }
            None => {
                out.push('&');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

fn decode_one(name: &str) -> Option<char> {
    if let Some(num) = name.strip_prefix('#') {
        let code = match num.strip_prefix(['x', 'X']) {
            Some(hex) => u32::from_str_radix(hex, 16).ok()?,
            None => num.parse::<u32>().ok()?,
        };
        // NUL and unpaired surrogates are not text; refuse rather than substitute.
        return char::from_u32(code).filter(|&c| c != '\0');
    }
    Some(match name {
        "amp" => '&',
        "lt" => '<',
        "gt" => '>',
        "quot" => '"',
        "apos" => '\'',
        "nbsp" => '\u{a0}',
        "mdash" => '\u{2014}',
        "ndash" => '\u{2013}',
        "hellip" => '\u{2026}',
        _ => return None,
    })
}

/// The post text inside an oEmbed `html` blockquote: the content of the first
/// `<p>` element, with `<br>` as newlines, other tags removed (their text
/// kept) and entities decoded. `None` when there is no `<p>…</p>`.
pub fn oembed_text(html: &str) -> Option<String> {
    let start = find_tag(html, "p")?;
    let open_end = start + html[start..].find('>')? + 1;
    let close = open_end + html[open_end..].find("</p>")?;
    let inner = &html[open_end..close];

    let mut text = String::with_capacity(inner.len());
    let mut rest = inner;
    while let Some(lt) = rest.find('<') {
        text.push_str(&rest[..lt]);
        let Some(gt) = rest[lt..].find('>') else {
            // An unterminated tag: keep the rest as text rather than guess.
            text.push_str(&rest[lt..]);
            rest = "";
            break;
        };
        let tag = &rest[lt + 1..lt + gt];
        let name = tag
            .trim_start_matches('/')
            .split([' ', '/'])
            .next()
            .unwrap_or("");
        if name.eq_ignore_ascii_case("br") {
            text.push('\n');
        }
        rest = &rest[lt + gt + 1..];
    }
    text.push_str(rest);
    Some(decode_entities(&text))
}

/// Position of the first `<name>` or `<name …>` start tag.
fn find_tag(html: &str, name: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(pos) = html[from..].find('<') {
        let at = from + pos;
        let after = &html[at + 1..];
        if after.len() > name.len()
            && after[..name.len()].eq_ignore_ascii_case(name)
            && matches!(after.as_bytes()[name.len()], b'>' | b' ' | b'\t' | b'\n')
        {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// Replaces every t.co link in `text` by the URL it stands for.
///
/// A link is replaced only where it is not followed by another URL character,
/// so `https://t.co/abc` never rewrites part of `https://t.co/abcd`.
pub fn expand_links<'a>(text: &str, links: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut out = text.to_owned();
    for (short, expanded) in links {
        if short.is_empty() {
            continue;
        }
        let mut result = String::with_capacity(out.len());
        let mut rest = out.as_str();
        while let Some(pos) = rest.find(short) {
            let end = pos + short.len();
            let boundary = rest[end..]
                .chars()
                .next()
                .is_none_or(|c| !(c.is_ascii_alphanumeric() || "-._~/?#=&%+".contains(c)));
            result.push_str(&rest[..pos]);
            result.push_str(if boundary { expanded } else { short });
            rest = &rest[end..];
        }
        result.push_str(rest);
        out = result;
    }
    out
}

/// Parses the ISO 8601 UTC timestamps of the syndication endpoint
/// (`2023-09-17T15:52:15.000Z`; fractional seconds optional, `Z` or `+00:00`)
/// into unix seconds. Other offsets are rejected: X always answers in UTC.
pub fn parse_iso8601_utc(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' {
        return None;
    }
    if b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u64> {
        let part = s.get(r)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut tail = &s[19..];
    if let Some(frac) = tail.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        tail = &frac[digits..];
    }
    if tail != "Z" && tail != "+00:00" {
        return None;
    }
    if !(1..=12).contains(&month) || hour > 23 || minute > 59 || second > 60 || year < 1970 {
        return None;
    }
    if day == 0 || day > days_in_month(year, month) {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some(days * 86_400 + hour * 3_600 + minute * 60 + second)
}

fn days_in_month(year: u64, month: u64) -> u64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm),
/// for years from 1970 on.
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// When a post with this snowflake id was created, in unix milliseconds.
///
/// Ids from before November 2010 are not snowflakes; for them this yields a
/// moment in November 2010, which is still far older than any challenge.
pub fn snowflake_unix_millis(id: u64) -> u64 {
    (id >> 22) + SNOWFLAKE_EPOCH_MS
}

/// Whether `handle` is a syntactically valid X screen name: 1–15 letters,
/// digits or `_` (X's rule, and the bound the binding records enforce).
pub fn is_valid_handle(handle: &str) -> bool {
    (1..=15).contains(&handle.len())
        && handle
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Whether `id` looks like an X numeric id (post or user): 1–20 ASCII digits
/// without a leading zero that fits in a `u64`.
pub fn parse_numeric_id(id: &str) -> Option<u64> {
    if id.is_empty() || id.len() > 20 || id.starts_with('0') {
        return None;
    }
    if !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    id.parse().ok()
}

/// The screen name in an oEmbed `author_url` (`https://twitter.com/jack` or
/// `https://x.com/jack`), if the URL is one of X's.
pub fn handle_from_author_url(author_url: &str) -> Option<String> {
    let url = url::Url::parse(author_url).ok()?;
    let host = url
        .host_str()?
        .trim_start_matches("www.")
        .trim_start_matches("mobile.");
    if !matches!(host, "twitter.com" | "x.com") {
        return None;
    }
    let mut segments = url.path_segments()?.filter(|s| !s.is_empty());
    let handle = segments.next()?;
    if segments.next().is_some() || !is_valid_handle(handle) {
        return None;
    }
    Some(handle.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_entities_x_uses() {
        assert_eq!(
            decode_entities("a &amp; b &lt;c&gt; &quot;d&quot; it&#39;s &#x27;e&#X27; &apos;"),
            "a & b <c> \"d\" it's 'e' '"
        );
        assert_eq!(
            decode_entities("&mdash; &hellip;&nbsp;"),
            "\u{2014} \u{2026}\u{a0}"
        );
    }

    #[test]
    fn decodes_once_not_twice() {
        // "&amp;lt;" is the text "&lt;", not "<".
        assert_eq!(decode_entities("&amp;lt;"), "&lt;");
    }

    #[test]
    fn leaves_unknown_or_broken_references_alone() {
        assert_eq!(
            decode_entities("AT&T & co &bogus; &#xZZ; &#0; &"),
            "AT&T & co &bogus; &#xZZ; &#0; &"
        );
        assert_eq!(decode_entities("&#55296;"), "&#55296;");
    }

    #[test]
    fn extracts_oembed_text() {
        let html = "<blockquote class=\"twitter-tweet\"><p lang=\"en\" dir=\"ltr\">Owl bet you&#39;ll lose &amp; win<br><br>see <a href=\"https://t.co/eJh4f2zncC\">pic.twitter.com/eJh4f2zncC</a></p>&mdash; San Diego Zoo (@sandiegozoo) <a href=\"https://twitter.com/sandiegozoo/status/1453110110599868418?ref_src=twsrc%5Etfw\">October 26, 2021</a></blockquote>\n";
        assert_eq!(
            oembed_text(html).as_deref(),
            Some("Owl bet you'll lose & win\n\nsee pic.twitter.com/eJh4f2zncC")
        );
        assert_eq!(oembed_text("<blockquote>no paragraph</blockquote>"), None);
        // An escaped tag in the text stays text.
        assert_eq!(
            oembed_text("<p>&lt;b&gt;x&lt;/b&gt;</p>").as_deref(),
            Some("<b>x</b>")
        );
        // `<pre>` is not `<p>`.
        assert_eq!(oembed_text("<pre>a</pre><p>b</p>").as_deref(), Some("b"));
    }

    #[test]
    fn expands_tco_links_on_boundaries_only() {
        let links = [("https://t.co/abc", "https://example.com/one")];
        assert_eq!(
            expand_links("see https://t.co/abc and https://t.co/abcd.", links),
            "see https://example.com/one and https://t.co/abcd."
        );
        assert_eq!(
            expand_links("end https://t.co/abc", links),
            "end https://example.com/one"
        );
        assert_eq!(
            expand_links("x https://t.co/abc, y", links),
            "x https://example.com/one, y"
        );
    }

    #[test]
    fn parses_syndication_timestamps() {
        assert_eq!(parse_iso8601_utc("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_iso8601_utc("2023-09-17T15:52:15.000Z"),
            Some(1_694_965_935)
        );
        assert_eq!(
            parse_iso8601_utc("2006-03-21T20:50:14.000Z"),
            Some(1_142_974_214)
        );
        assert_eq!(
            parse_iso8601_utc("2024-02-29T12:00:00+00:00"),
            Some(1_709_208_000)
        );
        assert_eq!(parse_iso8601_utc("2023-02-29T12:00:00Z"), None);
        assert_eq!(parse_iso8601_utc("2023-09-17T15:52:15+02:00"), None);
        assert_eq!(parse_iso8601_utc("Wed Sep 12 18:51:02 +0000 2018"), None);
        assert_eq!(parse_iso8601_utc("2023-09-17T15:52:15.Z"), None);
    }

    #[test]
    fn snowflake_time_matches_created_at() {
        // 1703436713362870723 was created at 2023-09-17T15:52:15.000Z.
        let ms = snowflake_unix_millis(1_703_436_713_362_870_723);
        assert_eq!(ms / 1000, 1_694_965_935);
    }

    #[test]
    fn validates_ids_and_handles() {
        assert_eq!(parse_numeric_id("20"), Some(20));
        assert_eq!(parse_numeric_id("18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_numeric_id("18446744073709551616"), None);
        assert_eq!(parse_numeric_id("012"), None);
        assert_eq!(parse_numeric_id("1e5"), None);
        assert!(is_valid_handle("jack_1"));
        assert!(!is_valid_handle("ja ck"));
        assert!(!is_valid_handle(""));
        assert!(!is_valid_handle("a/b"));
        assert!(is_valid_handle("abcdefghijklmno"));
        assert!(!is_valid_handle("abcdefghijklmnop"));
    }

    #[test]
    fn reads_handles_from_author_urls() {
        assert_eq!(
            handle_from_author_url("https://twitter.com/jack").as_deref(),
            Some("jack")
        );
        assert_eq!(
            handle_from_author_url("https://x.com/Jack_").as_deref(),
            Some("Jack_")
        );
        assert_eq!(handle_from_author_url("https://evil.example/jack"), None);
        assert_eq!(handle_from_author_url("https://x.com/jack/status/20"), None);
    }
}
