//! Entry points for the fuzz targets in `fuzz/` (each target is a one-line forwarder) and for
//! the seed-corpus test. Each function must not panic on any input, and checks a round trip
//! wherever the codec can re-encode what it decoded.

use bytes::BytesMut;

use crate::{
    decode_data_row, decode_error_fields, decode_notification, decode_parameter_status,
    decode_row_description, decode_startup, encode_data_row, encode_error_fields,
    encode_notification, encode_parameter_status, encode_row_description, encode_startup,
    next_frame, Authentication, FrontendMessage, StartupPacket, PQ_LARGE_MESSAGE_LIMIT,
};

/// Startup packets: decode, and for a StartupMessage re-encode and decode again.
pub fn startup(data: &[u8]) {
    if let Ok(Some((StartupPacket::Startup(m), n))) = decode_startup(data) {
        assert!(n <= data.len());
        if m.minor == 0 {
            let params: Vec<(&str, &str)> = m
                .params
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let mut out = BytesMut::new();
            encode_startup(&mut out, &params);
            let again = decode_startup(&out);
            assert!(
                matches!(&again, Ok(Some((StartupPacket::Startup(m2), n2))) if *n2 == out.len() && m2.params == m.params),
                "startup round trip"
            );
        }
    }
}

/// A stream of frontend messages, as the relay reads them.
pub fn frontend(data: &[u8]) {
    let mut rest = data;
    while let Ok(Some(f)) = next_frame(rest, PQ_LARGE_MESSAGE_LIMIT) {
        let _ = FrontendMessage::decode(f);
        rest = &rest[f.wire_len()..];
    }
}

/// A stream of backend messages, as the relay and the upstream login read them; error
/// fields and parameter statuses must round-trip byte for byte.
pub fn backend(data: &[u8]) {
    let mut rest = data;
    while let Ok(Some(f)) = next_frame(rest, PQ_LARGE_MESSAGE_LIMIT) {
        match f.tag {
            b'R' => {
                let _ = Authentication::decode(f);
            }
            b'E' | b'N' => {
                if let Ok(e) = decode_error_fields(f.body) {
                    let mut out = BytesMut::new();
                    encode_error_fields(&mut out, f.tag, &e.all);
                    assert_eq!(&out[..], &rest[..f.wire_len()], "error fields round trip");
                }
            }
            b'S' => {
                if let Ok((k, v)) = decode_parameter_status(f.body) {
                    let mut out = BytesMut::new();
                    encode_parameter_status(&mut out, k, v);
                    assert_eq!(
                        &out[..],
                        &rest[..f.wire_len()],
                        "parameter status round trip"
                    );
                }
            }
            b'T' => {
                if let Ok(cols) = decode_row_description(f.body) {
                    let mut out = BytesMut::new();
                    encode_row_description(&mut out, &cols);
                    assert_eq!(
                        &out[..],
                        &rest[..f.wire_len()],
                        "row description round trip"
                    );
                }
            }
            b'D' => {
                if let Ok(values) = decode_data_row(f.body) {
                    let mut out = BytesMut::new();
                    encode_data_row(&mut out, &values);
                    assert_eq!(&out[..], &rest[..f.wire_len()], "data row round trip");
                }
            }
            b'A' => {
                if let Ok((pid, channel, payload)) = decode_notification(f.body) {
                    let mut out = BytesMut::new();
                    encode_notification(&mut out, pid, channel, payload);
                    assert_eq!(&out[..], &rest[..f.wire_len()], "notification round trip");
                }
            }
            _ => {}
        }
        rest = &rest[f.wire_len()..];
    }
}
