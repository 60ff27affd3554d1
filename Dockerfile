# The tokenmeter image. Build it with scripts/build-image.sh, which builds the release binary
# and lays out its build context (rootfs/: the binary, exactly the shared libraries it links,
# CA certificates, the example config); CI builds and runs the image from this same file.
# FROM scratch: nothing but what the agent needs, so no base image is pulled.
FROM scratch
COPY rootfs/ /
# uid 0 with every capability dropped, as the DaemonSet runs it (the pod logs are root's and
# 0640/0600); the manifests set runAsUser and the capabilities, not the image.
USER 0:0
EXPOSE 9464
ENTRYPOINT ["/tokenmeter"]
CMD ["run", "--config", "/etc/tokenmeter/tokenmeter.toml"]
