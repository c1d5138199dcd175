"""marlctl.deploy: Kubernetes manifests, container images and observability files for a team of agent services."""
