//! Entry point for the fuzz target in `fuzz/` (a one-line forwarder) and for the seed-corpus
//! test. Must not panic on any input, and checks the property the relay relies on.

use crate::{classify_bytes, depends_on_settings, Encoding, TextSettings, ALL_ENCODINGS};

/// `data[0]` picks the client encoding, `data[1]` the server encoding (low 7 bits, among the
/// encodings PostgreSQL allows for a database) and `standard_conforming_strings` (high bit set =
/// off); the rest is the statement. Classifies it, and when the text does not depend on the
/// settings, checks that the outcome (statements, or failure) and the text are the same as
/// under the defaults.
pub fn classify(data: &[u8]) {
    let [c, s, sql @ ..] = data else { return };
    let servers: Vec<Encoding> = ALL_ENCODINGS
        .iter()
        .copied()
        .filter(|e| e.ascii_safe())
        .collect();
    let pick = |list: &[Encoding], b: u8| list.get(usize::from(b) % list.len()).copied();
    let (Some(client), Some(server)) = (pick(ALL_ENCODINGS, *c), pick(&servers, s & 0x7f)) else {
        return;
    };
    let settings = TextSettings {
        standard_conforming_strings: s & 0x80 == 0,
        client_encoding: client,
        server_encoding: server,
    };
    let got = classify_bytes(sql, &settings);
    if let Ok((text, _)) = &got {
        // Nothing ASCII appears that was not in the input, nothing ASCII is lost.
        let ascii_in = sql.iter().filter(|b| b.is_ascii()).count();
        let ascii_out = text.bytes().filter(u8::is_ascii).count();
        assert!(
            ascii_out <= ascii_in,
            "decoding added ASCII characters under {settings:?}"
        );
    }
    if !depends_on_settings(sql) {
        let base = classify_bytes(sql, &TextSettings::default());
        match (&got, &base) {
            (Ok((t1, s1)), Ok((t2, s2))) => {
                assert_eq!(t1, t2, "text under {settings:?}");
                assert_eq!(s1, s2, "statements under {settings:?}");
                assert_eq!(t1.as_bytes(), sql, "ASCII text decodes to itself");
            }
            (Err(_), Err(_)) => {}
            _ => panic!(
                "outcome depends on settings for settings-independent text: {settings:?}: {:?} vs {:?}",
                got.as_ref().map(|(_, s)| s.len()),
                base.as_ref().map(|(_, s)| s.len())
            ),
        }
    }
}
