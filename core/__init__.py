"""AlignKit core: pure Python (numpy, OpenCV, SciPy, pyproj, exif). Never imports qgis or PyQt."""
