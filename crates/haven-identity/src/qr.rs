//! The TOTP enrolment QR code, as an SVG image embedded in the enrolment page.

use qrcode::QrCode;
use qrcode::render::svg;

use crate::error::IdentityError;

/// Renders `text` (an `otpauth://` URI) as an SVG QR code.
///
/// # Errors
/// When the text is too long for a QR code.
pub fn svg(text: &str) -> Result<String, IdentityError> {
    let code = QrCode::new(text.as_bytes())
        .map_err(|e| IdentityError::Internal(format!("QR code: {e}")))?;
    Ok(code
        .render::<svg::Color<'_>>()
        .min_dimensions(200, 200)
        .quiet_zone(true)
        .build())
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_an_svg() {
        let s =
            super::svg("otpauth://totp/Haven:alice?secret=JBSWY3DPEHPK3PXP&issuer=Haven").unwrap();
        assert!(s.starts_with("<?xml") || s.starts_with("<svg"));
        assert!(s.contains("</svg>"));
    }
}
