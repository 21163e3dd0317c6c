#!/usr/bin/env bash
# Renders manifests/install.yaml, the plain-YAML install, from the Helm chart with its default
# values, and copies the generated CRDs into the chart (Helm installs charts/stepup/crds/).
#
# Usage: hack/render-manifests.sh           write charts/stepup/crds/ and manifests/install.yaml
#        hack/render-manifests.sh --check   fail when either is out of date (CI)
#
# Environment: HELM, the helm binary [the one e2e/scripts/build-controlplane.sh builds].
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CHART=$REPO/charts/stepup
OUT=$REPO/manifests/install.yaml
NAMESPACE=stepup-system
RELEASE=stepup

if [[ -z ${HELM:-} ]]; then
	HELM=$("$REPO/e2e/scripts/build-controlplane.sh")/helm
fi

render() {
	cat <<-HEADER
		# kube-stepup: plain-YAML install, rendered from charts/stepup with its default values.
		# Do not edit: regenerate with \`make manifests\` (hack/render-manifests.sh), which runs
		#   helm template $RELEASE charts/stepup -n $NAMESPACE --include-crds --skip-tests --set keys.existingSecret=stepup-keys
		# The master key is not in this file (a key shared by every copy of it would protect
		# nothing): create it first, or mount your own (see the chart's keys.volume):
		#   kubectl create namespace $NAMESPACE
		#   kubectl -n $NAMESPACE create secret generic stepup-keys --from-literal=master.key="\$(stepup keygen)"
		# Install:   kubectl apply --server-side -f manifests/install.yaml
		# Uninstall: first the admission policies that protect the CRDs, then everything (the CRDs,
		# and with them every policy and grant, the evidence, go too):
		#   kubectl delete validatingadmissionpolicybindings,validatingadmissionpolicies -l app.kubernetes.io/instance=$RELEASE
		#   sleep 5   # the API server drops a deleted policy within a few seconds
		#   kubectl delete -f manifests/install.yaml --ignore-not-found
		# Prefer the chart (helm install $RELEASE charts/stepup -n $NAMESPACE --create-namespace) to change values.
		---
		apiVersion: v1
		kind: Namespace
		metadata:
		  name: $NAMESPACE
		  labels:
		    app.kubernetes.io/part-of: kube-stepup
		    pod-security.kubernetes.io/enforce: restricted
	HEADER
	"$HELM" template "$RELEASE" "$CHART" --namespace "$NAMESPACE" --include-crds --skip-tests \
		--set keys.existingSecret=stepup-keys
}

case ${1:-} in
--check)
	rc=0
	if ! diff -u "$REPO/crds/stepup.dev.yaml" "$CHART/crds/stepup.dev.yaml"; then
		echo "charts/stepup/crds/stepup.dev.yaml differs from crds/stepup.dev.yaml: run make manifests" >&2
		rc=1
	fi
	if ! render | diff -u "$OUT" -; then
		echo "manifests/install.yaml is out of date: run make manifests" >&2
		rc=1
	fi
	exit "$rc"
	;;
"")
	cp "$REPO/crds/stepup.dev.yaml" "$CHART/crds/stepup.dev.yaml"
	render >"$OUT.tmp"
	mv "$OUT.tmp" "$OUT"
	echo "wrote $OUT" >&2
	;;
*)
	echo "usage: $0 [--check]" >&2
	exit 2
	;;
esac
