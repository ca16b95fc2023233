//! Table data in object stores, the shared disk of a multi-host cluster.
//!
//! A catalog path may be a URL: `s3://bucket/prefix/…`, `gs://…`, `az://…` (or
//! `abfs[s]://…`), `http(s)://…`. Each store is built from the process's environment
//! (`AWS_*`, `GOOGLE_*`, `AZURE_*`, as the `object_store` crate reads them) and, for `s3://`,
//! from the catalog's `[object_store]` settings, which win. The scheduler registers the
//! stores its catalog's tables live in and sends the settings to every executor when it
//! registers; an executor builds a store the first time a task reads from it
//! ([`StoreRegistry`]), so table data goes from the store straight to the executors.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use datafusion::error::{DataFusionError, Result};
use datafusion::execution::object_store::{DefaultObjectStoreRegistry, ObjectStoreRegistry};
use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::http::HttpBuilder;
use serde::Deserialize;
use url::Url;

/// The `[object_store]` settings of a catalog, for its `s3://` paths (an S3-compatible
/// store). Unset fields come from the environment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Settings {
    /// Endpoint of an S3-compatible store, e.g. `http://127.0.0.1:9000`.
    pub endpoint: Option<String>,
    /// Region.
    pub region: Option<String>,
    /// Access key id.
    pub access_key_id: Option<String>,
    /// Secret access key.
    pub secret_access_key: Option<String>,
    /// Session token of temporary credentials.
    pub session_token: Option<String>,
    /// Allow plain `http://` endpoints (a local store).
    pub allow_http: Option<bool>,
}

impl S3Settings {
    /// The settings as key/value pairs, for the wire (unset ones left out).
    pub fn to_map(&self) -> HashMap<String, String> {
        let fields = [
            ("endpoint", self.endpoint.clone()),
            ("region", self.region.clone()),
            ("access_key_id", self.access_key_id.clone()),
            ("secret_access_key", self.secret_access_key.clone()),
            ("session_token", self.session_token.clone()),
            ("allow_http", self.allow_http.map(|b| b.to_string())),
        ];
        fields
            .into_iter()
            .filter_map(|(key, value)| Some((key.to_string(), value?)))
            .collect()
    }

    /// Settings from key/value pairs as [`S3Settings::to_map`] writes them; unknown keys
    /// are an error.
    pub fn from_map(map: &HashMap<String, String>) -> std::result::Result<Self, String> {
        let mut settings = Self::default();
        for (key, value) in map {
            let value = Some(value.clone());
            match key.as_str() {
                "endpoint" => settings.endpoint = value,
                "region" => settings.region = value,
                "access_key_id" => settings.access_key_id = value,
                "secret_access_key" => settings.secret_access_key = value,
                "session_token" => settings.session_token = value,
                "allow_http" => {
                    settings.allow_http = Some(map[key].parse().map_err(|_| {
                        format!("allow_http must be true or false, not {:?}", map[key])
                    })?)
                }
                other => return Err(format!("unknown object store setting {other:?}")),
            }
        }
        Ok(settings)
    }
}

/// True when `path` (a catalog table's) names an object store rather than a local file.
pub fn is_url(path: &str) -> bool {
    path.contains("://") && !path.starts_with("file://")
}

/// The store holding `url`'s objects (one per bucket, container or host), built from
/// the environment and, for `s3://`, `s3`.
pub fn build_store(url: &Url, s3: &S3Settings) -> Result<Arc<dyn ObjectStore>> {
    let store: Arc<dyn ObjectStore> = match url.scheme() {
        "s3" | "s3a" => {
            let mut builder = AmazonS3Builder::from_env().with_url(url.as_str());
            if let Some(endpoint) = &s3.endpoint {
                builder = builder.with_endpoint(endpoint);
            }
            if let Some(region) = &s3.region {
                builder = builder.with_region(region);
            }
            if let Some(key) = &s3.access_key_id {
                builder = builder.with_access_key_id(key);
            }
            if let Some(secret) = &s3.secret_access_key {
                builder = builder.with_secret_access_key(secret);
            }
            if let Some(token) = &s3.session_token {
                builder = builder.with_token(token);
            }
            if let Some(allow) = s3.allow_http {
                builder = builder.with_allow_http(allow);
            }
            Arc::new(builder.build()?)
        }
        "gs" | "gcs" => Arc::new(
            GoogleCloudStorageBuilder::from_env()
                .with_url(url.as_str())
                .build()?,
        ),
        "az" | "adl" | "azure" | "abfs" | "abfss" => Arc::new(
            MicrosoftAzureBuilder::from_env()
                .with_url(url.as_str())
                .build()?,
        ),
        "http" | "https" => Arc::new(HttpBuilder::new().with_url(store_key(url)).build()?),
        other => {
            return Err(DataFusionError::Configuration(format!(
                "no object store for {other}:// URLs (s3, gs, az, http and https are known)"
            )));
        }
    };
    Ok(store)
}

/// The part of `url` that names its store: scheme and authority.
pub fn store_key(url: &Url) -> String {
    format!(
        "{}://{}",
        url.scheme(),
        &url[url::Position::BeforeHost..url::Position::AfterPort]
    )
}

/// An executor's object stores: local files as DataFusion has them, and remote stores
/// built on first use from the environment and the settings the scheduler sent.
#[derive(Debug, Default)]
pub struct StoreRegistry {
    local: DefaultObjectStoreRegistry,
    remote: RwLock<HashMap<String, Arc<dyn ObjectStore>>>,
    s3: RwLock<S3Settings>,
}

impl StoreRegistry {
    /// A registry with no remote store built yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes new `s3://` settings; stores built with the old ones are built again.
    pub fn set_s3(&self, settings: S3Settings) {
        let mut s3 = self.s3.write().expect("settings lock");
        if *s3 != settings {
            *s3 = settings;
            self.remote
                .write()
                .expect("stores lock")
                .retain(|key, _| !key.starts_with("s3"));
        }
    }
}

impl ObjectStoreRegistry for StoreRegistry {
    fn register_store(
        &self,
        url: &Url,
        store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        if url.scheme() == "file" {
            return self.local.register_store(url, store);
        }
        self.remote
            .write()
            .expect("stores lock")
            .insert(store_key(url), store)
    }

    fn deregister_store(&self, url: &Url) -> Result<Arc<dyn ObjectStore>> {
        if url.scheme() == "file" {
            return self.local.deregister_store(url);
        }
        self.remote
            .write()
            .expect("stores lock")
            .remove(&store_key(url))
            .ok_or_else(|| DataFusionError::Execution(format!("no object store for {url}")))
    }

    fn get_store(&self, url: &Url) -> Result<Arc<dyn ObjectStore>> {
        if url.scheme() == "file" {
            return self.local.get_store(url);
        }
        let key = store_key(url);
        if let Some(store) = self.remote.read().expect("stores lock").get(&key) {
            return Ok(store.clone());
        }
        let settings = self.s3.read().expect("settings lock").clone();
        let store = build_store(url, &settings)?;
        let mut remote = self.remote.write().expect("stores lock");
        Ok(remote.entry(key).or_insert(store).clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_survive_the_wire_and_bad_ones_are_named() {
        let settings = S3Settings {
            endpoint: Some("http://127.0.0.1:9000".into()),
            region: Some("us-east-1".into()),
            access_key_id: Some("key".into()),
            secret_access_key: Some("secret".into()),
            session_token: None,
            allow_http: Some(true),
        };
        let map = settings.to_map();
        assert_eq!(map.len(), 5);
        assert_eq!(S3Settings::from_map(&map), Ok(settings));
        let bad = HashMap::from([("allow_http".to_string(), "maybe".to_string())]);
        assert!(
            S3Settings::from_map(&bad)
                .unwrap_err()
                .contains("allow_http")
        );
        let unknown = HashMap::from([("bucket".to_string(), "b".to_string())]);
        assert!(
            S3Settings::from_map(&unknown)
                .unwrap_err()
                .contains("bucket")
        );
    }

    #[test]
    fn stores_are_built_once_per_bucket_and_again_after_new_settings() {
        let registry = StoreRegistry::new();
        registry.set_s3(S3Settings {
            endpoint: Some("http://127.0.0.1:9".into()),
            region: Some("us-east-1".into()),
            allow_http: Some(true),
            ..S3Settings::default()
        });
        let url = |s: &str| Url::parse(s).unwrap();
        let a = registry
            .get_store(&url("s3://bucket-a/x/y.parquet"))
            .unwrap();
        let again = registry.get_store(&url("s3://bucket-a/z")).unwrap();
        assert!(Arc::ptr_eq(&a, &again));
        let b = registry.get_store(&url("s3://bucket-b/x")).unwrap();
        assert!(!Arc::ptr_eq(&a, &b));
        registry.set_s3(S3Settings::default());
        let rebuilt = registry.get_store(&url("s3://bucket-a/x")).unwrap();
        assert!(!Arc::ptr_eq(&a, &rebuilt));
        assert!(registry.get_store(&url("file:///tmp")).is_ok());
        let error = registry.get_store(&url("ftp://host/x")).unwrap_err();
        assert!(error.to_string().contains("ftp"), "{error}");
    }

    #[test]
    fn only_remote_paths_are_urls() {
        assert!(is_url("s3://bucket/tpch/lineitem.parquet"));
        assert!(is_url("https://example.com/t.csv"));
        assert!(!is_url("data/lineitem.parquet"));
        assert!(!is_url("/abs/path"));
    }
}
