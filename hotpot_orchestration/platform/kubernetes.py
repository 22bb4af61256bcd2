"""What runs launched on Kubernetes by the K8sRunLauncher (deploy/dagster.yaml) need from their tags."""

import json

RELEASE_SERVICE_ACCOUNT = "hotpot-release"
# Release and image-build runs patch Ingresses, HTTPRoutes and Deployments and create kaniko Jobs, so their
# pods run as the service account of deploy/k8s/rbac-release.yaml. Local run launchers ignore this tag.
RELEASE_POD_TAGS = {
    "dagster-k8s/config": json.dumps({"pod_spec_config": {"service_account_name": RELEASE_SERVICE_ACCOUNT}})
}
