"""Run ``gcp-storage-emulator`` with the response headers tensorstore needs (test helper).

    python tests/helpers/gcs_emulator_server.py PORT BUCKET

Real GCS returns an object's generation in the ``x-goog-generation`` header of a media download;
tensorstore's GCS driver (Orbax's array storage, whose OCDBT manifests are updated read-modify-write)
refuses a download without it ("Malformed StorageGeneration").  The emulator does not send it, so the
download handler is wrapped here to add it before the server's routing table is built.
"""

import sys

from gcp_storage_emulator.handlers import objects

_download = objects.download


def _download_with_generation(request, response, storage, *args, **kwargs):
    _download(request, response, storage, *args, **kwargs)
    if response.status in (200, 206):
        obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
        response["x-goog-generation"] = str(obj["generation"])
        response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))


objects.download = _download_with_generation

from gcp_storage_emulator.server import create_server  # noqa: E402  (after the patch: it binds handlers)


def main() -> None:
    port, bucket = int(sys.argv[1]), sys.argv[2]
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket)
    server.run()


if __name__ == "__main__":
    main()
