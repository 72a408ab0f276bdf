//! carerix-operator: a Kubernetes operator that connects recruitment platforms to Carerix.

pub mod carerix;
