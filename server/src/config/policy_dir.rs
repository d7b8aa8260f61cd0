//! `policy_dir`: a policy directory read from disk.

use std::path::Path;

use mintgate_domain::policy::{POLICY_EXTENSION, PolicyFile, PolicySource, SCHEMA_FILE};

use super::{ConfigError, read};

/// Reads a policy directory: its `schema.cedarschema` and every `*.cedar` file in it (not in
/// subdirectories); anything else there is ignored. Whether it is a valid policy is the
/// domain's to say ([`mintgate_domain::policy::Policy::load`]).
pub fn load_policy_dir(dir: &Path) -> Result<PolicySource, ConfigError> {
    let field = "policy_dir";
    let schema = read(&dir.join(SCHEMA_FILE), field)?;
    let unreadable = |source| ConfigError::Read {
        field,
        path: dir.to_owned(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(unreadable)? {
        let path = entry.map_err(unreadable)?.path();
        if path.extension().is_some_and(|e| e == POLICY_EXTENSION) && path.is_file() {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            files.push(PolicyFile {
                name,
                text: read(&path, field)?,
            });
        }
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(PolicySource { schema, files })
}
