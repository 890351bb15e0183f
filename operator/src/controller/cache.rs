//! quiesce's own Deployments, Services and PodDisruptionBudgets as the
//! controller's watches last saw them, each kept as its JSON.
//!
//! With 10,000 resources these objects are most of the operator's memory.
//! A Deployment takes about 15 KiB parsed, for 4 KiB of JSON: parsing one
//! again when a reconcile reads it costs microseconds, and keeping it
//! parsed would put 10,000 resources over 200 MiB.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, RwLock};

use kube::Resource;
use kube::runtime::watcher;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

/// Namespace and name.
type Key = (String, String);
type Objects = Arc<RwLock<HashMap<Key, Arc<[u8]>>>>;

/// The reading end: cheap to clone, shared by the reconciles.
pub struct Cache<K> {
    objects: Objects,
    listed: watch::Receiver<bool>,
    kind: PhantomData<fn() -> K>,
}

impl<K> Clone for Cache<K> {
    fn clone(&self) -> Self {
        Self {
            objects: self.objects.clone(),
            listed: self.listed.clone(),
            kind: PhantomData,
        }
    }
}

/// The writing end, fed by one watch.
pub struct Writer<K> {
    objects: Objects,
    /// The objects of a list in progress; they replace the cache's when the
    /// list is complete.
    relisting: Option<HashMap<Key, Arc<[u8]>>>,
    listed: watch::Sender<bool>,
    kind: PhantomData<fn() -> K>,
}

/// An empty cache and the writer that fills it.
pub fn cache<K>() -> (Cache<K>, Writer<K>) {
    let objects = Objects::default();
    let (sender, listed) = watch::channel(false);
    let cache = Cache {
        objects: objects.clone(),
        listed,
        kind: PhantomData,
    };
    let writer = Writer {
        objects,
        relisting: None,
        listed: sender,
        kind: PhantomData,
    };
    (cache, writer)
}

fn key<K: Resource>(object: &K) -> Key {
    let meta = object.meta();
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

fn encode<K: Serialize>(object: &K) -> Arc<[u8]> {
    // Serializing a value that was just deserialized cannot fail.
    serde_json::to_vec(object)
        .expect("a watched object serializes")
        .into()
}

impl<K: Resource + Serialize> Writer<K> {
    /// Takes in one event of the watch.
    pub fn apply(&mut self, event: &watcher::Event<K>) {
        match event {
            watcher::Event::Init => self.relisting = Some(HashMap::new()),
            watcher::Event::InitApply(object) => {
                if let Some(relisting) = &mut self.relisting {
                    relisting.insert(key(object), encode(object));
                }
            }
            watcher::Event::InitDone => {
                if let Some(listed) = self.relisting.take() {
                    *self.objects.write().expect("cache lock") = listed;
                }
                self.listed.send_replace(true);
            }
            watcher::Event::Apply(object) => {
                let json = encode(object);
                let mut objects = self.objects.write().expect("cache lock");
                objects.insert(key(object), json);
            }
            watcher::Event::Delete(object) => {
                self.objects
                    .write()
                    .expect("cache lock")
                    .remove(&key(object));
            }
        }
    }
}

impl<K: DeserializeOwned> Cache<K> {
    /// Waits for the watch's first complete list. False when no watch
    /// feeds this cache any more, or never did.
    pub async fn listed(&self) -> bool {
        let mut listed = self.listed.clone();
        listed.wait_for(|listed| *listed).await.is_ok()
    }

    /// The object `namespace/name`, if the watch saw it.
    pub fn get(&self, namespace: &str, name: &str) -> Option<K> {
        let key = (namespace.to_owned(), name.to_owned());
        let json = self
            .objects
            .read()
            .expect("cache lock")
            .get(&key)
            .cloned()?;
        // It was serialized from a K.
        Some(serde_json::from_slice(&json).expect("a cached object deserializes"))
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.objects.read().expect("cache lock").len()
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Service;
    use kube::api::ObjectMeta;

    use super::*;

    fn service(name: &str, version: &str) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some("ml".to_owned()),
                resource_version: Some(version.to_owned()),
                ..ObjectMeta::default()
            },
            ..Service::default()
        }
    }

    fn version(cache: &Cache<Service>, name: &str) -> Option<String> {
        cache.get("ml", name)?.metadata.resource_version
    }

    #[tokio::test]
    async fn a_list_then_watch_events_fill_the_cache() {
        let (cache, mut writer) = cache::<Service>();
        assert!(!*cache.listed.borrow());
        writer.apply(&watcher::Event::Init);
        writer.apply(&watcher::Event::InitApply(service("a", "1")));
        // Not yet listed: the list is incomplete.
        assert_eq!(cache.len(), 0);
        writer.apply(&watcher::Event::InitDone);
        assert!(cache.listed().await);
        assert_eq!(version(&cache, "a").as_deref(), Some("1"));

        writer.apply(&watcher::Event::Apply(service("a", "2")));
        writer.apply(&watcher::Event::Apply(service("b", "3")));
        assert_eq!(version(&cache, "a").as_deref(), Some("2"));
        assert_eq!(version(&cache, "b").as_deref(), Some("3"));
        writer.apply(&watcher::Event::Delete(service("a", "4")));
        assert_eq!(cache.get("ml", "a"), None);
        assert_eq!(cache.get("other", "b"), None);
    }

    #[tokio::test]
    async fn a_relist_replaces_everything_once_complete() {
        let (cache, mut writer) = cache::<Service>();
        writer.apply(&watcher::Event::Init);
        writer.apply(&watcher::Event::InitApply(service("gone", "1")));
        writer.apply(&watcher::Event::InitDone);
        // The watch restarted: until the new list is complete, the old
        // objects are served.
        writer.apply(&watcher::Event::Init);
        writer.apply(&watcher::Event::InitApply(service("new", "5")));
        assert_eq!(version(&cache, "gone").as_deref(), Some("1"));
        writer.apply(&watcher::Event::InitDone);
        assert_eq!(cache.get("ml", "gone"), None);
        assert_eq!(version(&cache, "new").as_deref(), Some("5"));
        assert_eq!(cache.len(), 1);
    }

    #[tokio::test]
    async fn a_cache_without_a_watch_is_never_listed() {
        let (cache, writer) = cache::<Service>();
        drop(writer);
        assert!(!cache.listed().await);
    }
}
