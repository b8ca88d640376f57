"""Packaging for mlsys: everything is read from `settings.ini`, which nbdev also uses."""
from configparser import ConfigParser
from pathlib import Path
import setuptools

cfg = ConfigParser(delimiters=['='])
cfg.read(Path(__file__).parent/'settings.ini', encoding='utf-8')
cfg = cfg['DEFAULT']

requirements = cfg.get('requirements', '').split()
dev_requirements = cfg.get('dev_requirements', '').split()
readme = Path(__file__).parent/'README.md'

setuptools.setup(
    name=cfg['lib_name'], version=cfg['version'], description=cfg['description'],
    long_description=readme.read_text(encoding='utf-8') if readme.exists() else '',
    long_description_content_type='text/markdown',
    author=cfg['author'], author_email=cfg['author_email'], license='Apache-2.0',
    url=cfg['git_url'], python_requires=f">={cfg['min_python']}",
    # the job notebooks travel inside the package as `mlsys/jobs`, so `pip install .` can run the pipeline
    packages=setuptools.find_packages(include=['mlsys', 'mlsys.*']) + ['mlsys.jobs'],
    package_dir={'mlsys.jobs': 'nbs/jobs'}, package_data={'mlsys.jobs': ['*.ipynb'], 'mlsys': ['data/*.yaml']}, include_package_data=True,
    install_requires=requirements, extras_require={'dev': dev_requirements},
    entry_points={'console_scripts': cfg['console_scripts'].split(),
                  'nbdev': [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"]},
    zip_safe=False)
