"""End-to-end: real dockerd, containerd and skopeo pulling through real bridges."""
