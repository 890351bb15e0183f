//! Why a reconcile failed, with what to do about it.

use quiesce_api::reason::Reason;

use super::plan::NotOwned;

/// A failed reconcile; the controller retries it with a backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading an object failed.
    #[error("cannot read {kind} {namespace}/{name}: {}", describe(.source))]
    Read {
        /// Kind of the object.
        kind: &'static str,
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The API error.
        source: kube::Error,
    },
    /// Server-side apply of an object failed.
    #[error("cannot apply {kind} {namespace}/{name}: {}", describe(.source))]
    Apply {
        /// Kind of the object.
        kind: &'static str,
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The API error.
        source: kube::Error,
    },
    /// Deleting a Service or PodDisruptionBudget the spec disabled failed.
    #[error("cannot delete {kind} {namespace}/{name}, which the spec disables: {}", describe(.source))]
    Delete {
        /// Kind of the object.
        kind: &'static str,
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The API error.
        source: kube::Error,
    },
    /// Writing the status failed.
    #[error("cannot write the status of InferenceDeployment {namespace}/{name}: {}", describe(.source))]
    Status {
        /// The resource's namespace.
        namespace: String,
        /// The resource's name.
        name: String,
        /// The API error.
        source: kube::Error,
    },
    /// An object with the resource's name belongs to another controller.
    #[error(transparent)]
    NotOwned(#[from] NotOwned),
    /// The resource lacks metadata every stored object has.
    #[error(
        "the InferenceDeployment has no {0}: only resources read from the API server can be \
         reconciled"
    )]
    Incomplete(&'static str),
}

impl Error {
    /// Why it failed, one of [`Reason::FAILURES`].
    pub fn reason(&self) -> Reason {
        match self {
            Self::Read { source, .. }
            | Self::Apply { source, .. }
            | Self::Delete { source, .. }
            | Self::Status { source, .. } => api_failure(source),
            Self::NotOwned(_) => Reason::NotOwned,
            Self::Incomplete(_) => Reason::InvalidSpec,
        }
    }
}

/// The reason of a failed API call, by its status code.
pub fn api_failure(error: &kube::Error) -> Reason {
    match error {
        kube::Error::Api(status) => match status.code {
            409 => Reason::ApiConflict,
            401 | 403 => Reason::ApiForbidden,
            429 => Reason::ApiServerError,
            400..=499 => Reason::ApiRejected,
            _ => Reason::ApiServerError,
        },
        _ => Reason::ApiUnreachable,
    }
}

/// An API error in one line, with a hint where the status code tells what
/// to do. kube's own `Display` of an API error repeats the whole status.
pub fn describe(error: &kube::Error) -> String {
    let kube::Error::Api(status) = error else {
        return format!("{error} (is the API server reachable?)");
    };
    let hint = match status.code {
        401 | 403 => {
            " (grant the operator's ServiceAccount the RBAC rules listed in docs/operator.md)"
        }
        409 => " (another writer got in between; retrying)",
        429 | 500..=599 => " (the API server is overloaded or failing; retrying)",
        _ => "",
    };
    let reason = if status.reason.is_empty() {
        String::new()
    } else {
        format!(" {}", status.reason)
    };
    format!("{}{reason}: {}{hint}", status.code, status.message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16, reason: &str, message: &str) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure(message, reason)
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn messages_name_the_object_and_say_what_to_do() {
        let error = Error::Apply {
            kind: "Deployment",
            namespace: "ml".to_owned(),
            name: "demo".to_owned(),
            source: api_error(403, "Forbidden", "deployments.apps \"demo\" is forbidden"),
        };
        assert_eq!(
            error.to_string(),
            "cannot apply Deployment ml/demo: 403 Forbidden: deployments.apps \"demo\" is \
             forbidden (grant the operator's ServiceAccount the RBAC rules listed in \
             docs/operator.md)"
        );
        assert_eq!(error.reason(), Reason::ApiForbidden);

        let error = Error::Status {
            namespace: "ml".to_owned(),
            name: "demo".to_owned(),
            source: api_error(500, "InternalError", "etcdserver: request timed out"),
        };
        assert_eq!(
            error.to_string(),
            "cannot write the status of InferenceDeployment ml/demo: 500 InternalError: \
             etcdserver: request timed out (the API server is overloaded or failing; retrying)"
        );
        assert_eq!(error.reason(), Reason::ApiServerError);
    }

    #[test]
    fn api_errors_map_to_bounded_reasons() {
        let reason = |code| api_failure(&api_error(code, "Test", "nope"));
        assert_eq!(reason(409), Reason::ApiConflict);
        assert_eq!(reason(403), Reason::ApiForbidden);
        assert_eq!(reason(401), Reason::ApiForbidden);
        assert_eq!(reason(422), Reason::ApiRejected);
        assert_eq!(reason(404), Reason::ApiRejected);
        assert_eq!(reason(429), Reason::ApiServerError);
        assert_eq!(reason(500), Reason::ApiServerError);
        assert_eq!(reason(503), Reason::ApiServerError);
        let transport = kube::Error::LinesCodecMaxLineLengthExceeded;
        assert_eq!(api_failure(&transport), Reason::ApiUnreachable);
    }
}
