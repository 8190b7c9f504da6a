"""Drives a running mamori gateway with NVIDIA's own Open Inference Protocol client.

Used by tests/tritonclient_compat.rs: the client library (`tritonclient[http]`, written by
others) is used unchanged, exactly as its documentation shows. Protocol-level facts (exception
types, statuses, dtypes, shapes) are asserted here; the numbers are printed as one JSON object on
stdout and compared by the Rust test with what the in-process model computes.

usage: triton_client.py URL API_KEY MODEL INPUTS.json
  URL          host:port of the gateway (no scheme, as tritonclient expects)
  INPUTS.json  {"fp32": [[...], ...], "uint8": [[...], ...], "sample_shape": [c, h, w]}
"""

import json
import sys

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


def expect_error(fn, status):
    """Calls fn, which must raise InferenceServerException with `status`; returns the message."""
    try:
        fn()
    except InferenceServerException as e:
        assert e.status() == status, f"status {e.status()!r} != {status!r}: {e.message()}"
        return e.message()
    raise AssertionError("no InferenceServerException was raised")


def result_dict(res):
    """The outputs of an InferResult as plain lists (None when absent)."""
    out = {}
    for name in ("probabilities", "label"):
        arr = res.as_numpy(name)
        out[name] = None if arr is None else arr.tolist()
        out[name + "_dtype"] = None if arr is None else str(arr.dtype)
    resp = res.get_response()
    out["binary"] = [
        o["name"] for o in resp["outputs"] if "binary_data_size" in o.get("parameters", {})
    ]
    out["model_name"] = resp.get("model_name")
    out["id"] = resp.get("id")
    return out


def main():
    url, key, model, inputs_path = sys.argv[1:5]
    with open(inputs_path) as f:
        inputs = json.load(f)
    sample_shape = inputs["sample_shape"]
    bearer = {"Authorization": f"Bearer {key}"}

    def auth():
        # A fresh dict per call: InferenceServerClient.infer writes Inference-Header-Content-Length
        # into the dict it is given, which would leak into the next request.
        return dict(bearer)

    report = {}

    client = httpclient.InferenceServerClient(url=url)
    report["live"] = client.is_server_live(headers=auth())
    report["ready"] = client.is_server_ready(headers=auth())
    report["server_metadata"] = client.get_server_metadata(headers=auth())
    report["model_ready"] = client.is_model_ready(model, headers=auth())
    report["model_ready_v1"] = client.is_model_ready(model, model_version="1", headers=auth())
    report["unknown_model_ready"] = client.is_model_ready("no-such-model", headers=auth())
    report["model_metadata"] = client.get_model_metadata(model, headers=auth())
    # Triton's model-configuration extension is not part of the Open Inference Protocol.
    report["model_config_error"] = expect_error(
        lambda: client.get_model_config(model, headers=auth()), "404"
    )

    fp32 = np.asarray(inputs["fp32"], dtype=np.float32).reshape([-1] + sample_shape)

    def infer(arr, datatype, binary_input, outputs=None, request_id="", version=""):
        inp = httpclient.InferInput("input", list(arr.shape), datatype)
        inp.set_data_from_numpy(arr, binary_data=binary_input)
        return client.infer(
            model,
            [inp],
            model_version=version,
            outputs=outputs,
            request_id=request_id,
            headers=auth(),
        )

    # The client's defaults: binary input tensor, binary outputs (`binary_data_output`).
    report["fp32_default"] = result_dict(infer(fp32, "FP32", True, request_id="tc-1"))
    # JSON input tensor, requested outputs in JSON.
    outs_json = [
        httpclient.InferRequestedOutput("probabilities", binary_data=False),
        httpclient.InferRequestedOutput("label", binary_data=False),
    ]
    report["fp32_json"] = result_dict(infer(fp32, "FP32", False, outs_json))
    # Mixed: probabilities in binary, label in JSON; through the versioned URL too.
    mixed = [
        httpclient.InferRequestedOutput("probabilities", binary_data=True),
        httpclient.InferRequestedOutput("label", binary_data=False),
    ]
    report["fp32_mixed"] = result_dict(infer(fp32, "FP32", True, mixed, version="1"))
    # Only the label requested.
    report["label_only"] = result_dict(
        infer(fp32, "FP32", True, [httpclient.InferRequestedOutput("label")])
    )
    # UINT8 raw bytes, normalised by the gateway with the card's normalisation.
    u8 = np.asarray(inputs["uint8"], dtype=np.uint8).reshape([-1] + sample_shape)
    report["uint8"] = result_dict(infer(u8, "UINT8", True))
    report["uint8_json"] = result_dict(infer(u8, "UINT8", False))

    # Errors come back as InferenceServerException carrying the gateway's message.
    bad_shape = np.zeros([2, 5, 5], dtype=np.float32)
    report["wrong_shape_error"] = expect_error(lambda: infer(bad_shape, "FP32", True), "400")
    report["wrong_shape_json_error"] = expect_error(
        lambda: infer(bad_shape, "FP32", False), "400"
    )
    out_of_range = fp32 * 0 + 7.0
    report["out_of_range_error"] = expect_error(
        lambda: infer(out_of_range, "FP32", True), "400"
    )
    report["unknown_output_error"] = expect_error(
        lambda: infer(fp32, "FP32", True, [httpclient.InferRequestedOutput("logits")]), "400"
    )
    report["class_count_error"] = expect_error(
        lambda: infer(
            fp32, "FP32", True, [httpclient.InferRequestedOutput("probabilities", class_count=2)]
        ),
        "400",
    )
    inp = httpclient.InferInput("input", list(fp32.shape), "FP32")
    inp.set_data_from_numpy(fp32)
    report["no_key_error"] = expect_error(lambda: client.infer(model, [inp]), "401")
    report["bad_key_error"] = expect_error(
        lambda: client.infer(model, [inp], headers={"Authorization": "Bearer mk_0_nope"}), "401"
    )
    report["unknown_model_error"] = expect_error(
        lambda: client.infer("no-such-model", [inp], headers=auth()), "404"
    )
    client.close()
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main()
