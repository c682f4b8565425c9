"""Adapters between the engine's toolkit-neutral :class:`~itk_odereg.registration.result.Registration` and the toolkits.

* :mod:`.sitk`: SimpleITK images and transforms;
* :mod:`.itk`: ITK Python images and transforms;
* :mod:`.ants`: the files ANTs writes (``0GenericAffine.mat``, ``1Warp.nii.gz``, ...), by exactly one writer;
* :mod:`.result`: :class:`RegistrationResult`, what :func:`itk_odereg.register` returns.

Data flows one way: an adapter loads images as tensors on grids, the engine registers
them, and an adapter converts the answer. The adapters import SimpleITK and ITK only when
called.
"""
