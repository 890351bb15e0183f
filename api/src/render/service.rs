//! The Service in front of the ready pods.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec as KubeServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::labels::{Component, selector_labels};
use super::owner::Owner;
use crate::{InferenceDeploymentSpec, ServiceType};

/// Name of the Service's only port.
pub const SERVICE_PORT_NAME: &str = "http";

/// The Service of `spec`, or `None` when `spec.service.enabled` is false.
///
/// It exposes the engine's port only. The sidecar's port stays out: its
/// endpoints are read-only, but nothing about the drain needs to be
/// reachable through the Service, and Prometheus scrapes pods directly.
pub fn render_service(spec: &InferenceDeploymentSpec, owner: &Owner) -> Option<Service> {
    let service = &spec.service;
    if !service.enabled {
        return None;
    }
    let engine_port = spec.engine.port;
    Some(Service {
        metadata: owner.metadata(Component::InferenceService),
        spec: Some(KubeServiceSpec {
            type_: Some(service_type(service.type_).to_owned()),
            selector: Some(selector_labels(&owner.name)),
            ports: Some(vec![ServicePort {
                name: Some(SERVICE_PORT_NAME.to_owned()),
                port: service.port.unwrap_or(engine_port),
                target_port: Some(IntOrString::Int(engine_port)),
                protocol: Some("TCP".to_owned()),
                ..ServicePort::default()
            }]),
            ..KubeServiceSpec::default()
        }),
        status: None,
    })
}

fn service_type(type_: ServiceType) -> &'static str {
    match type_ {
        ServiceType::ClusterIP => "ClusterIP",
        ServiceType::NodePort => "NodePort",
        ServiceType::LoadBalancer => "LoadBalancer",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::fixtures::*;
    use crate::render::labels::selector_labels;

    #[test]
    fn the_service_exposes_the_engine_port_only() {
        let service = render_service(&spec(MINIMAL), &owner_in(None)).unwrap();
        assert_eq!(service.metadata.name.as_deref(), Some("demo"));
        assert_eq!(
            service.metadata.labels.unwrap()["app.kubernetes.io/component"],
            "inference-service"
        );
        let body = service.spec.unwrap();
        assert_eq!(body.type_.as_deref(), Some("ClusterIP"));
        assert_eq!(body.selector, Some(selector_labels("demo")));
        let ports = body.ports.unwrap();
        assert_eq!(ports.len(), 1, "never the sidecar's port");
        assert_eq!(ports[0].name.as_deref(), Some("http"));
        assert_eq!(ports[0].port, 8000);
        assert_eq!(ports[0].target_port, Some(IntOrString::Int(8000)));
    }

    #[test]
    fn port_and_type_follow_the_spec() {
        let spec = spec(&format!(
            "{MINIMAL}engine: {{port: 30000}}\nservice: {{type: LoadBalancer, port: 80}}\n"
        ));
        let body = render_service(&spec, &owner_in(None))
            .unwrap()
            .spec
            .unwrap();
        assert_eq!(body.type_.as_deref(), Some("LoadBalancer"));
        let port = &body.ports.unwrap()[0];
        assert_eq!(port.port, 80);
        assert_eq!(port.target_port, Some(IntOrString::Int(30000)));
    }

    #[test]
    fn a_disabled_service_is_not_rendered() {
        let spec = spec(&format!("{MINIMAL}service: {{enabled: false}}\n"));
        assert_eq!(render_service(&spec, &owner_in(None)), None);
    }
}
