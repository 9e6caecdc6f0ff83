"""bench/add_first_pass.py --propagation: each request gets the propagation of the frames its first_pass covers."""

from __future__ import annotations

from bench import add_first_pass


def test_propagation_goes_to_the_frames_each_request_covers_and_nowhere_else():
    prop = [round(0.1 * i, 4) for i in range(24)]  # one value per frame of the encode
    req = {"first_frame": 8, "first_pass": {"intra_cost": [1.0] * 12, "inter_cost": [0.5] * 12}}
    add_first_pass.add_propagation(req, prop)
    assert req["first_pass"]["propagation"] == prop[8:20]  # its own 8 frames... and 4 of the lookahead's
    assert req["first_pass"]["intra_cost"] == [1.0] * 12  # the rest as it was
    end = {"first_frame": 20, "first_pass": {"intra_cost": [1.0] * 4}}  # the last mini-GOP: no lookahead
    add_first_pass.add_propagation(end, prop)
    assert end["first_pass"]["propagation"] == prop[20:24]
    v1 = {"first_frame": 0}  # a request without first-pass statistics gets none
    add_first_pass.add_propagation(v1, prop)
    assert "first_pass" not in v1
