//! Durations in configuration files, written the way people write them ("100ms", "5s").

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// `#[serde(with = "faultline_core::duration")]`: parses humantime text.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text)
        .map_err(|e| serde::de::Error::custom(format!("{e} (e.g. \"100ms\")")))
}
