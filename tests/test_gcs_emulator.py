"""The GCS emulator's own helpers for fixtures (sbs_jax/testing/gcs_emulator.py): what they
put on the server is what TensorFlow's own gs:// client reads."""


def test_an_uploaded_folder_reads_back_through_tensorflow_and_downloads_whole(gcs, tmp_path):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  src = tmp_path / "src"
  files = {"checkpoint": b"\x00\x01msgpack", "target.a/.zarray": b'{"shape": [2]}',
           "target.a/0": bytes(range(256)), "deep/er/x y.txt": "naïve\n".encode()}
  for name, data in files.items():
    (src / name).parent.mkdir(parents=True, exist_ok=True)
    (src / name).write_bytes(data)
  names = gcs.upload_folder(src, "sbs-test", "emulator/up/")
  assert sorted(names) == sorted(f"emulator/up/{n}" for n in files)
  assert sorted(gcs.list_objects("sbs-test", "emulator/up/")) == sorted(names)
  for name, data in files.items():
    with tf.io.gfile.GFile(f"gs://sbs-test/emulator/up/{name}", "rb") as f:
      assert f.read() == data, name
  back = tmp_path / "back"
  gcs.download_prefix("sbs-test", "emulator/up", back)
  assert {p.relative_to(back).as_posix(): p.read_bytes() for p in back.rglob("*")
          if p.is_file()} == files
