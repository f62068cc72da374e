"""The serving core: screen a film with a fitted model, no TensorFlow, no fitting code.

Every front end -- the web app, ``python -m helpers.screen``, the archive job, the
notebook explorer and the phone app's exports -- screens through this package:

* :mod:`helpers.serving.pipeline` -- :class:`~helpers.serving.pipeline.Screener`
  (bytes -> decode -> one engine pass -> guard -> decision -> heat map), its
  :class:`~helpers.serving.pipeline.ScreeningResult`, and where the files are found;
* :mod:`helpers.serving.engine` -- the engine interface, the LiteRT one-pass engine
  and the LiteRT runtime (interpreter pool, tensors, metadata);
* :mod:`helpers.serving.guard` -- the out-of-distribution detector of notebook 07, applied;
* :mod:`helpers.serving.site` -- a site calibration of notebook 08, applied.

It imports NumPy, Pillow, LiteRT and the small pure modules of ``helpers`` only
(``.importlinter`` forbids TensorFlow, Keras and the fitting modules), so
``app/requirements.txt`` is enough to run it. Fitting lives beside it:
:mod:`helpers.ood` and :mod:`helpers.guard` fit the guard, :mod:`helpers.site` the
site calibration, :mod:`helpers.one_pass` builds the one-pass model and its Keras engine.
"""
