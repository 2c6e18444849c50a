//! Newtype ids, so a build id can never be passed where a job id is expected.

use std::fmt;
use std::str::FromStr;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        pub struct $name(pub uuid::Uuid);

        impl $name {
            /// A fresh random id.
            pub fn new() -> Self {
                Self(uuid::Uuid::new_v4())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                uuid::Uuid::parse_str(s.trim())
                    .map(Self)
                    .map_err(|_| format!("`{s}` is not a {} id: expected a UUID such as 3f2b8c1e-7d4a-4c61-9a57-0b6e2f1d9c3a", $what))
            }
        }
    };
}

uuid_id!(
    /// Identifies one `manifold build` invocation (all of its platforms).
    BuildId,
    "build"
);
uuid_id!(
    /// Identifies one platform's job inside a build; stable across retry attempts.
    JobId,
    "job"
);
